/*-------------------------------------------------------------------------
 *
 * job.h
 *	  One step of a repair as the worker runs it, and what a provider
 *	  module implements to run its steps.
 *
 * A step is a small state machine: start() issues its first request,
 * on_response() reads each answer and either issues the next request or
 * settles the verdict.  What the step learned (follow-up steps, events for
 * the support report, the customer found, the plan of a dry run) is kept
 * on the Job and written by the worker in one transaction with the
 * verdict, so a step's effects are recorded all or nothing.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_JOB_H
#define CELLOATTR_JOB_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "lib/ilist.h"
#include "nodes/pg_list.h"

#include "http.h"

typedef enum JobVerdict
{
	JOB_RUNNING,				/* a request is out or waiting to go */
	JOB_DONE,
	JOB_FAILED,					/* for good: the provider said no */
	JOB_RETRY,					/* a transient fault: again after backoff */
	JOB_SNOOZE,					/* rate limited: again later, no attempt used */
	JOB_SUPPORT					/* cannot be done by API: to the report */
} JobVerdict;

typedef struct Job Job;
struct IndexSource;
struct IndexView;
struct IndexPage;

typedef struct StepOps
{
	const char *kind;
	const char *provider;		/* pacing and the log */
	void		(*start) (Job *job);
	void		(*on_response) (Job *job, HttpExchange *exchange);

	/*
	 * Optional: the step stands for an event that must reach Cello.  Called
	 * when its retries are used up; adds (job_support) the event to the
	 * support report, so the step ends 'support' instead of 'failed'.
	 */
	void		(*give_up) (Job *job);

	/*
	 * Doing the step again changes nothing (reads, and writes under an
	 * idempotency key): its outcome may be committed asynchronously, since
	 * losing it in a crash only means the step runs again.
	 */
	bool		replay_safe;

	/*
	 * Optional: the provider's payment events this step reads from the
	 * shared index (eventindex.h).  Its claim reads them, or makes the step
	 * read the next page of the index's listing, or wait for it.
	 */
	const struct IndexSource *index;
} StepOps;

/* A step that this one found must follow it. */
typedef struct FollowUp
{
	const char *kind;
	char	   *payload;		/* JSON object */
	char	   *key_suffix;		/* makes the idempotency key unique */
	bool		mutates;		/* only 'planned' in a dry run */
} FollowUp;

/* An event that must go to Cello support (same fields as the event). */
typedef struct SupportItem
{
	const char *trigger;
	bool		has_timestamp;
	TimestampTz event_timestamp;
	char	   *price;			/* numeric as text, major units */
	char	   *currency;
	char	   *subscription_id;
	char	   *invoice_id;
	const char *interval;
	bool		has_seats;
	int32		seats;
	char	   *product_key;
	char	   *reason;
	int64		transaction_id; /* 0 unless a registered transaction */
} SupportItem;

struct Job
{
	/* the step, as claimed */
	int64		id;
	int64		attribution_id;
	char	   *kind;
	int16		stage;
	int			attempts;
	char	   *idempotency_key;
	char	   *payload;		/* JSON object */
	Oid			extension;		/* the celloattr it was claimed from: ids
								 * start again in a re-created one */

	/* its attribution */
	char	   *ucc;
	char	   *new_user_id;
	char	   *gateway;
	char	   *customer_id;
	char	   *email;
	char	   *name;
	char	   *organization_id;
	bool		signup_via_api;
	bool		has_signed_up_at;
	TimestampTz signed_up_at;
	TimestampTz requested_at;
	bool		force;
	bool		dry_run;

	/* running it */
	const StepOps *ops;
	MemoryContext cxt;			/* everything of this job; deleted at the end */
	void	   *state;			/* the step's own */
	HttpExchange *pending;		/* request waiting for a pacing token */
	List	   *exchanges;		/* every request made, for the log */
	dlist_node	node;			/* in the list of steps waiting for pace */
	dlist_node	running_node;	/* in the list of running steps */
	TimestampTz lease_ends;		/* settled by then, or aborted and retried */
	struct IndexView *index;	/* what its claim read of the event index */

	/* outcome */
	JobVerdict	verdict;
	char	   *error;
	long		last_status;
	double		snooze_seconds;
	char	   *result;			/* JSON, kept in jobs.result */
	char	   *found_customer;
	char	   *plan;			/* JSON object merged into attributions.plan */
	List	   *follow_ups;
	List	   *support;
	struct IndexPage *index_page;	/* a page of the index's listing it read */
};

/* Look up how to run a kind of step; NULL for an unknown kind. */
extern const StepOps *job_step_ops(const char *kind);

/* The kinds of steps that are not replay-safe, added to a text column. */
struct ArrayColumn;
extern void job_unrepeatable_kinds(struct ArrayColumn *kinds);

/* Issue a request: the worker sends it when the provider's pace allows. */
extern HttpExchange *job_request(Job *job, const char *method, const char *url);
extern void job_send(Job *job, HttpExchange *exchange);

/* A request to base (a URL setting, trailing slashes dropped) + a path built
 * from path_fmt; escape every value put into the path with url_escape(). */
extern HttpExchange *job_requestf(Job *job, const char *method, const char *base,
								  const char *path_fmt,...) pg_attribute_printf(4, 5);
extern HttpExchange *job_requestv(Job *job, const char *method, const char *base,
								  const char *path_fmt, va_list args) pg_attribute_printf(4, 0);

/* A string member of the step's payload (palloc'd), or NULL. */
extern char *job_payload_string(Job *job, const char *key);

extern void job_done(Job *job);
extern void job_fail(Job *job, const char *fmt,...) pg_attribute_printf(2, 3);
extern void job_retry(Job *job, const char *fmt,...) pg_attribute_printf(2, 3);
/* Again after the given seconds without using an attempt. */
extern void job_snooze(Job *job, double seconds, const char *fmt,...) pg_attribute_printf(3, 4);

/*
 * True for a 2xx answer.  Otherwise settles the verdict the way every
 * provider needs it: transport errors, 5xx and 409 are retried, 429 is
 * waited out, other 4xx fail with the provider's message (provider_message
 * picks it out of the error body).  An unrepeatable request (no idempotency
 * key) whose transport error came after it went out is not retried: see
 * job_unsure_if_sent().
 */
/*
 * For an exchange that failed: if it was unrepeatable and may have reached
 * the provider, the step is set aside (failed, saying so, for an operator
 * to check and retry()) and true is returned.  Sending it again could
 * count an event twice, which is worse than a repair that waits.
 */
extern bool job_unsure_if_sent(Job *job, HttpExchange *exchange);

extern bool job_response_ok(Job *job, HttpExchange *exchange,
							double default_retry_after,
							char *(*provider_message) (const char *body));

/*
 * The one customer of a list answer (the items at list_key, each holding
 * the customer at item_path, "" for the item itself); NULL when there is
 * none, or (job failed) when several match or the answer has no list.
 */
struct json_object;
extern struct json_object *job_only_customer(Job *job, const char *provider,
											 struct json_object *answer,
											 const char *list_key,
											 const char *item_path,
											 const char *how);

extern void job_follow_up(Job *job, const char *kind, char *payload,
						  char *key_suffix, bool mutates);
extern SupportItem *job_support(Job *job, const char *trigger,
								const char *reason);

/* Start of the window inside which past events are replayed. */
extern TimestampTz job_window_start(void);

/* The support report's reason for a payment older than the window. */
extern char *job_too_old_reason(void);

#endif							/* CELLOATTR_JOB_H */
