/*-------------------------------------------------------------------------
 *
 * celloattr.h
 *	  What the modules of celloattr offer each other: settings, the shared
 *	  state between backends and the worker, and the queueing API that the
 *	  SQL functions and the triggers share.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_H
#define CELLOATTR_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"

#include "compat.h"

/* The SQL version this library runs (version.c), also in its User-Agent. */
#define CELLOATTR_VERSION "1.1"

/* ------------------------------------------------------------ guc.c */

extern char *celloattr_database;	/* '*', or a list of names */
extern int	celloattr_max_workers;
extern char *celloattr_stripe_api_url;
extern char *celloattr_stripe_webhook_endpoint;
extern char *celloattr_stripe_api_version;
extern char *celloattr_chargebee_site;
extern char *celloattr_chargebee_api_url;
extern char *celloattr_chargebee_webhook_url;
extern bool celloattr_chargebee_custom_fields;
extern char *celloattr_cello_api_url;
extern int	celloattr_transaction_window;	/* seconds */
extern int	celloattr_max_in_flight;
extern int	celloattr_connect_timeout;	/* ms */
extern int	celloattr_request_timeout;	/* ms */
extern int	celloattr_max_attempts;
extern int	celloattr_backoff_base;	/* ms */
extern int	celloattr_backoff_max;	/* s */
extern int	celloattr_poll_interval;	/* ms */
extern int	celloattr_lease;		/* s */
extern bool celloattr_allow_http;
extern bool celloattr_paused;
extern int	celloattr_log_body_limit;	/* bytes */
extern double celloattr_stripe_rate_limit;	/* requests per second */
extern double celloattr_chargebee_rate_limit;	/* requests per minute */
extern double celloattr_cello_rate_limit;	/* requests per second */
extern int	celloattr_retention;	/* minutes, 0: forever */
extern int	celloattr_retention_batch;

extern void celloattr_define_gucs(bool preloading);

/* The names celloattr.database lists, in the current context; NIL for '*'. */
extern List *celloattr_listed_databases(void);
/* Whether celloattr.database names that database ('*' names them all). */
extern bool celloattr_serves_database(const char *name);

/* --------------------------------------------------------- secrets.c */

#define CELLOATTR_SECRET_KEYS 6

/* The keys of the secrets file (each was a celloattr.* setting in 1.0). */
extern const char *const celloattr_secret_keys[CELLOATTR_SECRET_KEYS];

extern char *celloattr_secrets_file;	/* the setting */

/* The secrets, as the worker last read them; "" when unset.  Only the
 * worker reads the file: in other processes they are always "". */
extern char *celloattr_stripe_secret_key;
extern char *celloattr_chargebee_api_key;
extern char *celloattr_chargebee_webhook_username;
extern char *celloattr_chargebee_webhook_password;
extern char *celloattr_cello_access_key_id;
extern char *celloattr_cello_secret_access_key;

/* Read the secrets file again: at the worker's start and on each SIGHUP,
 * outside a transaction (it runs one to look up its database's name). */
extern void celloattr_secrets_load(void);

/* Whether the worker has secrets to work with: it read a secrets file, or
 * celloattr.secrets_file is empty. */
extern bool celloattr_secrets_ready(void);

/* ------------------------------------------------------- celloattr.c */

/*
 * A worker's place in shared memory: the launcher assigns one to a
 * database before it starts the worker there, and frees it once the worker
 * has stopped.  celloattr.max_workers of them.
 */
typedef struct WorkerSlot
{
	Oid			database;		/* InvalidOid: free */
	uint32		generation;		/* which start of the launcher's it is for */
	pid_t		pid;			/* 0 until the worker runs, and once it left */
	Latch	   *latch;			/* NULL while pid is 0 */
	bool		no_extension;	/* it found no celloattr in its database */
	uint32		created_seen;	/* extensions_created before it looked */
} WorkerSlot;

/* Commands on different databases waiting at once that ask their workers
 * to leave first (vacate.c); more proceed as PostgreSQL would without it. */
#define CELLOATTR_MAX_VACATES 16

/* State shared between backends, the launcher and the workers (exists
 * only when the library was preloaded). */
typedef struct CelloattrShared
{
	slock_t		mutex;
	ConditionVariable progress; /* broadcast when an attribution changes */
	Latch	   *launcher_latch; /* NULL while no launcher runs */
	uint32		extensions_created; /* CREATE EXTENSION celloattr commits */
	uint32		databases_changed;	/* CREATE, ALTER or DROP DATABASE */
	uint32		generations;	/* slots handed out so far */
	Oid			vacating[CELLOATTR_MAX_VACATES];	/* databases a command needs
													 * without their worker */
	int			vacate_requests[CELLOATTR_MAX_VACATES]; /* backends waiting, each */
	int			nslots;
	WorkerSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} CelloattrShared;

extern CelloattrShared *celloattr_shared;
extern bool celloattr_preloaded;
extern bool celloattr_am_worker;

/* ----------------------------------------------------------- slots.c */

extern Size slots_shmem_size(void);
extern void slots_shmem_init(void);

/* Set the latch of the worker serving that database, if one runs. */
extern void celloattr_wake_worker_of(Oid database);

/* Ask the launcher to look at the databases again (extension_created:
 * also at those where no extension was found), now or once this
 * transaction commits. */
extern void celloattr_poke_launcher(bool extension_created);
extern void celloattr_poke_launcher_at_commit(bool extension_created);
/* Wake this database's worker once this transaction commits (the
 * extension was dropped: it leaves). */
extern void celloattr_wake_own_worker_at_commit(void);

/* What the launcher tells a worker it starts (bgw_extra): its slot. */
typedef struct WorkerTicket
{
	int			slot;
	uint32		generation;
} WorkerTicket;

/* The worker takes its slot; false when the ticket is stale (a launcher
 * that stopped registered it, and its slot went to another), or when
 * another worker still runs in the database (*other: its pid). */
extern bool celloattr_slot_attach(const WorkerTicket *ticket, pid_t *other);
/* The worker's slot, once attached; NULL before. */
extern WorkerSlot *celloattr_my_slot;
/* The worker leaves it (pid and latch cleared; the launcher frees it). */
extern void celloattr_slot_detach(void);
/* The count of CREATE EXTENSION celloattr commits so far. */
extern uint32 celloattr_extensions_created(void);
/* The worker found no extension after reading that count. */
extern void celloattr_slot_no_extension(uint32 created_seen);

/* Whether a command (DROP DATABASE, ...) waits for that database's worker
 * to leave: the worker leaves, and the launcher starts none there. */
extern bool celloattr_database_vacating(Oid database);

/* Wake the worker when the current transaction commits. */
extern void celloattr_wake_worker_at_commit(void);

/* --------------------------------------------------------- version.c */

/* The worker's check of pg_extension.extversion (in a transaction). */
extern bool celloattr_worker_may_run(void);
/* Its last check found no celloattr in the database at all. */
extern bool celloattr_extension_missing;
/* The SQL functions' check: errors on a version the library does not know. */
extern void celloattr_check_sql_version(void);
extern void celloattr_version_init(void);

/* ------------------------------------------------------- attribute.c */

/* One repair as asked for by SQL or a trigger; NULL strings are absent. */
typedef struct AttributionRequest
{
	const char *ucc;
	const char *new_user_id;
	const char *gateway;
	const char *customer_id;
	const char *email;
	const char *name;
	const char *organization_id;
	bool		signup_via_api_isnull;
	bool		signup_via_api;
	bool		signed_up_at_isnull;
	TimestampTz signed_up_at;
	const char *reason;
	bool		force;
	bool		dry_run;
} AttributionRequest;

/* Validate and queue one repair; returns the attribution id. */
extern int64 celloattr_attribute(const AttributionRequest *req);

/* ---------------------------------------------------------- pending.c */

/* A path starts with at most a Cello signup and a customer lookup. */
#define CELLOATTR_MAX_FIRST_STEPS 2

/* A first step of a repair as planned at queueing time. */
typedef struct QueuedStep
{
	const char *kind;
	int16		stage;
	const char *state;			/* queued, waiting or planned */
} QueuedStep;

/* A validated repair, planned, ready to be inserted. */
typedef struct QueuedAttribution
{
	const AttributionRequest *req;
	bool		signup_via_api;
	const char *requested_by;
	const char *state;			/* queued, or planned: a dry run with
								 * nothing to read */
	bool		finished;
	int			nsteps;
	QueuedStep	steps[CELLOATTR_MAX_FIRST_STEPS];
} QueuedAttribution;

/* Batching is possible in this process (the hooks that write batches are
 * in place from its start). */
extern bool celloattr_pending_usable(void);

/* Add a new attribution to the statement's batch and return its id, or 0
 * when the user has a live attribution already or is in the batch: then
 * the caller must take the careful path. */
extern int64 celloattr_pending_queue(const QueuedAttribution *a);

/* Write the batch now. */
extern void celloattr_pending_flush(void);

/* While set, statements reading celloattr tables leave the batch alone
 * (the careful path reads only users that are not in it); returns the
 * previous setting. */
extern bool celloattr_pending_hold(bool hold);

/* statement.c: install the hooks that write batches as statements end. */
extern void celloattr_pending_init(void);

/* ----------------------------------------------------------- batch.c */

/* The request batch (celloattr.progress) of the running client statement
 * in this transaction, or 0 before it queued an attribution; the first
 * attribution it queues (id) names it: returns the batch id joins. */
extern int64 celloattr_statement_batch(void);
extern int64 celloattr_join_batch(int64 id);
/* false on the SQL objects of 1.0, whose attributions have no batch */
extern bool celloattr_attributions_have_batch(void);

/* One transaction of an attributed user (Cello API path). */
typedef struct TransactionRequest
{
	const char *new_user_id;
	const char *invoice_id;
	bool		amount_isnull;
	Datum		amount;			/* numeric */
	const char *currency;
	bool		paid_at_isnull;
	TimestampTz paid_at;
	const char *interval;
	const char *product_key;
	const char *subscription_id;
	bool		seats_isnull;
	int32		seats;
	const char *trigger;
} TransactionRequest;

/* The id of the user's live Cello API attribution, its row locked; 0 when
 * the user (NULL or empty too) has none. */
extern int64 celloattr_cello_attribution_of(const char *new_user_id);

/* Register one transaction of that attribution, validated by the caller
 * (celloattr_validate_transaction); the transaction's id (that of the same
 * invoice and trigger when registered before). */
extern int64 celloattr_register_transaction(int64 attribution_id,
											const TransactionRequest *req);

/* A transaction that failed validation (why: the message) goes to the
 * support report with the fields it has, instead of to Cello. */
extern void celloattr_report_invalid_transaction(int64 attribution_id,
												 const TransactionRequest *req,
												 const char *why);

/* ----------------------------------------------------------- plans.c */

/* Prepare (once: *cache keeps the plan) a statement with a generic plan. */
extern struct _SPI_plan *celloattr_prepare(struct _SPI_plan **cache,
										   const char *sql, int nargs,
										   Oid *types);

/* The same, planned anew for each call's parameter values. */
extern struct _SPI_plan *celloattr_prepare_replanned(struct _SPI_plan **cache,
													 const char *sql, int nargs,
													 Oid *types);

/* Run a prepared statement; ERROR unless SPI answers expected.  Returns
 * the number of rows processed. */
extern int	celloattr_execute(struct _SPI_plan *plan, Datum *values,
							  const char *nulls, int expected);

/*
 * A column of a batch of rows, passed to a statement as one array
 * parameter; the statement turns the arrays back into rows with unnest().
 * Its memory is the current context's.
 */
typedef struct ArrayColumn
{
	Oid			type;			/* of the elements */
	int			n;
	int			cap;
	Datum	   *values;
	bool	   *nulls;
} ArrayColumn;

#define ARRAY_COLUMNS_MAX 16

/* Empty columns of the given element types, room for about cap rows. */
extern void celloattr_columns_init(ArrayColumn *cols, const Oid *types,
								   int ncols, int cap);
extern void celloattr_column_add(ArrayColumn *c, Datum value, bool isnull);
/* A C string (or NULL) as the column's next text value. */
extern void celloattr_column_text(ArrayColumn *c, const char *s);

/* The columns as parameters: each an array, its type in types[]. */
extern void celloattr_column_params(ArrayColumn *cols, int ncols, Oid *types,
									Datum *values);

/* Prepare once (generic plan) and run a statement whose parameters
 * $1..$ncols are the columns; ERROR unless SPI answers expected. */
extern int	celloattr_execute_columns(struct _SPI_plan **cache, const char *sql,
									  ArrayColumn *cols, int ncols, int expected);

/* A C string (or NULL) as a text parameter and its null flag. */
extern Datum celloattr_text_datum(const char *s, char *null);

/* The int8 first column of every row SPI returned, in cxt; *n of them. */
extern int64 *celloattr_result_int8s(MemoryContext cxt, int *n);

/* The first column of the first row SPI returned, as int8 (0 if NULL). */
extern int64 celloattr_first_int8(void);

/* A text argument of a SQL function as a C string, or NULL. */
struct FunctionCallInfoBaseData;
extern const char *celloattr_text_arg(struct FunctionCallInfoBaseData *fcinfo, int n);

/* -------------------------------------------------------- validate.c */

extern void celloattr_validate_attribution(const AttributionRequest *req);
extern void celloattr_validate_transaction(const TransactionRequest *req);

/* A caller's value as an error message may quote it. */
extern char *celloattr_shown(const char *value);

#endif							/* CELLOATTR_H */
