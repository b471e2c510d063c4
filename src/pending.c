/*-------------------------------------------------------------------------
 *
 * pending.c
 *	  Attributions queued by the running statement, inserted together when
 *	  it finishes.
 *
 * A repair query over thousands of users calls cello_attribute() once per
 * row, and an attribute trigger fires once per inserted user.  Running an
 * INSERT per call costs an executor start-up (constraint checks rebuilt,
 * foreign keys checked one by one) for every row; collecting the new
 * attributions and inserting them with one statement per batch pays that
 * once per batch.
 *
 * The caller still gets its answer at once: the id comes from the
 * sequence, and a user who already has a live attribution (committed, or
 * being inserted by another transaction) is found by a probe of the
 * attributions_live_user index under a dirty snapshot and handed back to
 * the careful path in attribute.c, which takes the row lock and decides
 * repeat, dispute or supersede.  So is a user queued twice in one batch.
 * Only a race between another session's probe and its insert and ours is
 * left to the unique index: the batch then fails with a serialization
 * failure, and running the statement again finds the other attribution.
 *
 * The batch is written before anything can see it missing: when the
 * statement or utility command that queued it finishes, before a later
 * statement that reads a celloattr table starts (statement.c decides
 * both), when it is full, and at the latest before the transaction
 * commits or prepares.  A subtransaction
 * that aborts takes its rows with it.  A batch written inside a
 * subtransaction that then aborts, while some of its rows belonged to the
 * enclosing transaction, would lose them: the enclosing transaction then
 * refuses to commit rather than commit ids that lead nowhere.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "celloattr.h"
#include "pending.h"

/*
 * Rows per INSERT: enough that the statement's fixed cost disappears, few
 * enough that a batch's arrays stay small.
 */
#define PENDING_BATCH 1000

/* The columns of a queued attribution, in the flush statement's order. */
enum
{
	C_ID, C_UCC, C_USER, C_GATEWAY, C_CUSTOMER, C_EMAIL, C_NAME, C_ORG,
	C_SIGNUP_API, C_SIGNED_UP_AT, C_REASON, C_FORCE, C_DRY_RUN,
	C_REQUESTED_BY, C_STATE, C_FINISHED_AT, NCOLUMNS
};
static const Oid column_types[NCOLUMNS] = {
	INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	BOOLOID, TIMESTAMPTZOID, TEXTOID, BOOLOID, BOOLOID,
	TEXTOID, TEXTOID, TIMESTAMPTZOID
};

/* The columns of their first steps. */
enum
{
	J_ATTRIBUTION, J_KIND, J_STAGE, J_STATE, NJOBCOLUMNS
};
static const Oid job_column_types[NJOBCOLUMNS] = {
	INT8OID, TEXTOID, INT2OID, TEXTOID
};

/* What makes an attribution live for a user: the unique index's key. */
typedef struct UserKey
{
	const char *gateway;
	const char *new_user_id;
	bool		dry_run;
} UserKey;

typedef struct UserEntry
{
	UserKey		key;
	int			row;
} UserEntry;

typedef struct PendingRow
{
	UserKey		key;			/* strings in the batch's context */
	int			xact_level;		/* (sub)transaction it belongs to */
	int			first_step;		/* its steps start there in steps[] */
} PendingRow;

typedef struct Pending
{
	MemoryContext context;		/* the strings and the hash table */
	HTAB	   *users;			/* UserKey -> row */
	Oid			owner;			/* the role the rows are inserted as */
	int			max_depth;		/* deepest statement nesting of a call */
	int			nrows;
	PendingRow	rows[PENDING_BATCH];
	ArrayColumn columns[NCOLUMNS];	/* the rows, in the batch's context */
	ArrayColumn steps[NJOBCOLUMNS];	/* their first steps */
} Pending;

static Pending *pending = NULL;

/* attribute.c's careful path runs: what it reads is never a queued user */
static bool holding = false;

/*
 * Batches written inside a subtransaction that hold rows of an enclosing
 * level: (subtransaction level, lowest row level) pairs.  If that
 * subtransaction aborts, the enclosing one must not commit.
 */
typedef struct Exposure
{
	int			level;
	int			lowest_row_level;
} Exposure;

#define MAX_EXPOSURES 8
static Exposure exposures[MAX_EXPOSURES];
static int	nexposures = 0;
static bool rows_lost = false;

/* Looked up by each call (the extension may be re-created any time). */
static Oid	schema_oid;
static Oid	attributions_oid;
static Oid	live_user_index_oid;
static Oid	id_sequence_oid;

static SPIPlanPtr flush_plan = NULL;

static uint32
user_key_hash(const void *key, Size keysize)
{
	const UserKey *k = key;

	return hash_bytes((const unsigned char *) k->new_user_id,
					  strlen(k->new_user_id)) ^
		hash_bytes((const unsigned char *) k->gateway, strlen(k->gateway)) ^
		(k->dry_run ? 0x9e3779b9 : 0);
}

static int
user_key_match(const void *key1, const void *key2, Size keysize)
{
	const UserKey *a = key1;
	const UserKey *b = key2;

	return (a->dry_run == b->dry_run &&
			strcmp(a->new_user_id, b->new_user_id) == 0 &&
			strcmp(a->gateway, b->gateway) == 0) ? 0 : 1;
}

/* An empty batch: its context reset and a new hash table in it. */
static void
pending_reset(void)
{
	HASHCTL		ctl;
	MemoryContext old;

	if (pending == NULL)
	{
		pending = MemoryContextAllocZero(TopMemoryContext, sizeof(Pending));
		pending->context = AllocSetContextCreate(TopMemoryContext,
												 "celloattr pending attributions",
												 ALLOCSET_DEFAULT_SIZES);
	}
	else
		MemoryContextReset(pending->context);
	old = MemoryContextSwitchTo(pending->context);
	pending->nrows = 0;
	pending->max_depth = 0;
	celloattr_columns_init(pending->columns, column_types, NCOLUMNS, PENDING_BATCH);
	celloattr_columns_init(pending->steps, job_column_types, NJOBCOLUMNS,
						   PENDING_BATCH * CELLOATTR_MAX_FIRST_STEPS);
	ctl.keysize = sizeof(UserKey);
	ctl.entrysize = sizeof(UserEntry);
	ctl.hash = user_key_hash;
	ctl.match = user_key_match;
	ctl.hcxt = pending->context;
	pending->users = hash_create("celloattr pending users", PENDING_BATCH, &ctl,
								 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	MemoryContextSwitchTo(old);
}

static inline bool
have_rows(void)
{
	return pending != NULL && pending->nrows > 0;
}

static void
lookup_relations(void)
{
	schema_oid = get_namespace_oid("celloattr", false);
	attributions_oid = get_relname_relid("attributions", schema_oid);
	live_user_index_oid = get_relname_relid("attributions_live_user", schema_oid);
	id_sequence_oid = get_relname_relid("attributions_id_seq", schema_oid);
	if (!OidIsValid(attributions_oid) || !OidIsValid(live_user_index_oid) ||
		!OidIsValid(id_sequence_oid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the celloattr schema lacks its attributions table, index or sequence"),
				 errhint("Re-create the extension: DROP EXTENSION celloattr; CREATE EXTENSION celloattr.")));
}

/*
 * Does a live attribution of this user exist, committed or being inserted
 * by a transaction still running (ours included)?
 */
static bool
live_attribution_exists(const UserKey *key)
{
	Relation	heap = table_open(attributions_oid, RowExclusiveLock);
	Relation	index = index_open(live_user_index_oid, RowExclusiveLock);
	SnapshotData dirty;
	ScanKeyData keys[3];
	IndexScanDesc scan;
	TupleTableSlot *slot;
	bool		found;

	InitDirtySnapshot(dirty);
	ScanKeyEntryInitialize(&keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   index->rd_indcollation[0], F_TEXTEQ,
						   CStringGetTextDatum(key->gateway));
	ScanKeyEntryInitialize(&keys[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   index->rd_indcollation[1], F_TEXTEQ,
						   CStringGetTextDatum(key->new_user_id));
	ScanKeyEntryInitialize(&keys[2], 0, 3, BTEqualStrategyNumber, InvalidOid,
						   InvalidOid, F_BOOLEQ, BoolGetDatum(key->dry_run));
	slot = table_slot_create(heap, NULL);
	scan = index_beginscan(heap, index, &dirty, 3, 0);
	index_rescan(scan, keys, 3, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(heap, NoLock);
	return found;
}

/* Write the batch: one INSERT of the attributions and their first steps. */
void
celloattr_pending_flush(void)
{
	Oid			types[NCOLUMNS + NJOBCOLUMNS];
	Datum		params[NCOLUMNS + NJOBCOLUMNS];
	int			nrows,
				nsteps,
				lowest_level = INT_MAX;
	Oid			owner,
				save_userid;
	int			save_sec_context,
				save_nestlevel;
	bool		pushed_snapshot;
	MemoryContext flush_context = CurrentMemoryContext;

	if (!have_rows())
		return;

	/* the arrays are copies: the batch is empty before any SQL runs */
	nrows = pending->nrows;
	nsteps = pending->steps[0].n;
	celloattr_column_params(pending->columns, NCOLUMNS, types, params);
	celloattr_column_params(pending->steps, NJOBCOLUMNS, types + NCOLUMNS,
							params + NCOLUMNS);
	for (int i = 0; i < nrows; i++)
		lowest_level = Min(lowest_level, pending->rows[i].xact_level);
	owner = pending->owner;
	pending_reset();

	if (lowest_level < GetCurrentTransactionNestLevel())
	{
		if (nexposures == MAX_EXPOSURES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("too many nested subtransactions hold queued attributions")));
		exposures[nexposures++] = (Exposure) {GetCurrentTransactionNestLevel(), lowest_level};
	}

	/* as the extension's owner, with nothing of the caller's search_path */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

	/* at the end of a portal or at commit no snapshot is active any more */
	pushed_snapshot = !ActiveSnapshotSet();
	if (pushed_snapshot)
		PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");
	celloattr_prepare(&flush_plan,
			"WITH a AS ("
			"  INSERT INTO celloattr.attributions"
			"    (id, ucc, new_user_id, gateway, customer_id, email, name, organization_id,"
			"     signup_via_api, signed_up_at, reason, force, dry_run, requested_by,"
			"     state, finished_at)"
			"  SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
			"                       $13, $14, $15, $16)"
			"), j AS ("
			"  INSERT INTO celloattr.jobs (attribution_id, kind, stage, state, idempotency_key)"
			"  SELECT p.id, p.kind, p.stage, p.state,"
			"         'ca-' || i.install_id || '-' || p.id || '-' || p.kind"
			"    FROM unnest($17, $18, $19, $20) AS p(id, kind, stage, state)"
			"         CROSS JOIN celloattr.installation i"
			"  RETURNING 1"
			")"
			"SELECT count(*) FROM j",
			NCOLUMNS + NJOBCOLUMNS, types);
	PG_TRY();
	{
		celloattr_execute(flush_plan, params, NULL, SPI_OK_SELECT);
	}
	PG_CATCH();
	{
		/*
		 * The probe saw no live attribution of these users: a unique
		 * violation means another transaction queued one of them since.
		 * Say so, as an error that asks to be retried.
		 */
		ErrorData  *edata;

		MemoryContextSwitchTo(flush_context);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION ||
			edata->constraint_name == NULL ||
			strcmp(edata->constraint_name, "attributions_live_user") != 0)
			PG_RE_THROW();
		FlushErrorState();
		edata->sqlerrcode = ERRCODE_T_R_SERIALIZATION_FAILURE;
		edata->message = pstrdup("another transaction attributed a user that this statement queued");
		edata->hint = pstrdup("Run the statement again: it will meet the other transaction's attribution.");
		ReThrowError(edata);
	}
	PG_END_TRY();
	if (celloattr_first_int8() != nsteps)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("celloattr.installation has no row"),
				 errhint("Re-create the extension: DROP EXTENSION celloattr; CREATE EXTENSION celloattr.")));
	SPI_finish();
	if (pushed_snapshot)
		PopActiveSnapshot();

	AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

bool
celloattr_pending_usable(void)
{
	/* the hooks that write the batch are in place from the start only
	 * when the library is preloaded */
	return celloattr_preloaded && !celloattr_am_worker;
}

int64
celloattr_pending_queue(const QueuedAttribution *a)
{
	const AttributionRequest *req = a->req;
	UserKey		key;
	UserEntry  *entry;
	PendingRow *row;
	ArrayColumn *c;
	MemoryContext old;
	int			n;
	int64		id;

	if (pending == NULL)
		pending_reset();
	lookup_relations();

	key.gateway = req->gateway;
	key.new_user_id = req->new_user_id;
	key.dry_run = req->dry_run;
	if (hash_search(pending->users, &key, HASH_FIND, NULL) != NULL)
	{
		/* queued twice: let the careful path meet the first one */
		celloattr_pending_flush();
		return 0;
	}
	if (live_attribution_exists(&key))
		return 0;

	if (have_rows() && pending->owner != GetUserId())
		celloattr_pending_flush();
	if (pending->nrows == PENDING_BATCH)
		celloattr_pending_flush();

	id = nextval_internal(id_sequence_oid, false);
	n = pending->nrows;
	row = &pending->rows[n];
	old = MemoryContextSwitchTo(pending->context);
	c = pending->columns;
	celloattr_column_add(&c[C_ID], Int64GetDatum(id), false);
	celloattr_column_text(&c[C_UCC], req->ucc);
	celloattr_column_text(&c[C_USER], req->new_user_id);
	celloattr_column_text(&c[C_GATEWAY], req->gateway);
	celloattr_column_text(&c[C_CUSTOMER], req->customer_id);
	celloattr_column_text(&c[C_EMAIL], req->email);
	celloattr_column_text(&c[C_NAME], req->name);
	celloattr_column_text(&c[C_ORG], req->organization_id);
	celloattr_column_add(&c[C_SIGNUP_API], BoolGetDatum(a->signup_via_api), false);
	celloattr_column_add(&c[C_SIGNED_UP_AT], TimestampTzGetDatum(req->signed_up_at),
						 req->signed_up_at_isnull);
	celloattr_column_text(&c[C_REASON], req->reason);
	celloattr_column_add(&c[C_FORCE], BoolGetDatum(req->force), false);
	celloattr_column_add(&c[C_DRY_RUN], BoolGetDatum(req->dry_run), false);
	celloattr_column_text(&c[C_REQUESTED_BY], a->requested_by);
	celloattr_column_text(&c[C_STATE], a->state);
	celloattr_column_add(&c[C_FINISHED_AT],
						 TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
						 !a->finished);

	row->key.gateway = pstrdup(req->gateway);
	row->key.new_user_id = pstrdup(req->new_user_id);
	row->key.dry_run = req->dry_run;
	row->xact_level = GetCurrentTransactionNestLevel();
	row->first_step = pending->steps[0].n;
	for (int i = 0; i < a->nsteps; i++)
	{
		celloattr_column_add(&pending->steps[J_ATTRIBUTION], Int64GetDatum(id), false);
		celloattr_column_text(&pending->steps[J_KIND], a->steps[i].kind);
		celloattr_column_add(&pending->steps[J_STAGE], Int16GetDatum(a->steps[i].stage), false);
		celloattr_column_text(&pending->steps[J_STATE], a->steps[i].state);
	}
	MemoryContextSwitchTo(old);

	entry = hash_search(pending->users, &row->key, HASH_ENTER, NULL);
	entry->row = n;
	pending->owner = GetUserId();
	pending->max_depth = Max(pending->max_depth, celloattr_executor_depth);
	pending->nrows = n + 1;
	return id;
}

bool
celloattr_pending_hold(bool hold)
{
	bool		was = holding;

	holding = hold;
	return was;
}

/* Whether a statement must see the batch before it starts. */
bool
celloattr_pending_precedes(PlannedStmt *stmt)
{
	ListCell   *lc;

	if (!have_rows() || holding)
		return false;
	foreach(lc, stmt->rtable)
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);

		if (rte->rtekind == RTE_RELATION &&
			get_rel_namespace(rte->relid) == schema_oid)
			return true;
	}
	return false;
}

int
celloattr_pending_depth(void)
{
	return have_rows() ? pending->max_depth : -1;
}

static void
pending_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			celloattr_pending_flush();
			if (rows_lost)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("attributions queued by this transaction were undone with a subtransaction"),
						 errdetail("They were written inside a subtransaction that rolled back, so the ids returned for them lead nowhere."),
						 errhint("Run the transaction again.")));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PREPARE:
			if (have_rows())
				pending_reset();
			nexposures = 0;
			rows_lost = false;
			holding = false;
			break;
		default:
			break;
	}
}

static void
pending_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			keep = 0;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* rows queued in the subtransaction are the batch's tail */
		if (have_rows())
		{
			int			n = pending->nrows;

			while (n > 0 && pending->rows[n - 1].xact_level >= level)
			{
				n--;
				hash_search(pending->users, &pending->rows[n].key, HASH_REMOVE, NULL);
			}
			if (n < pending->nrows)
			{
				for (int c = 0; c < NCOLUMNS; c++)
					pending->columns[c].n = n;
				for (int c = 0; c < NJOBCOLUMNS; c++)
					pending->steps[c].n = pending->rows[n].first_step;
			}
			pending->nrows = n;
		}
		for (int i = 0; i < nexposures; i++)
		{
			if (exposures[i].level >= level)
				rows_lost |= exposures[i].lowest_row_level < level;
			else
				exposures[keep++] = exposures[i];
		}
		nexposures = keep;
		holding = false;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		if (have_rows())
			for (int n = pending->nrows; n > 0 && pending->rows[n - 1].xact_level >= level; n--)
				pending->rows[n - 1].xact_level = level - 1;
		for (int i = 0; i < nexposures; i++)
		{
			if (exposures[i].level >= level)
				exposures[i].level = level - 1;
			if (exposures[i].lowest_row_level < exposures[i].level)
				exposures[keep++] = exposures[i];
		}
		nexposures = keep;
	}
}

void
celloattr_pending_register_callbacks(void)
{
	RegisterXactCallback(pending_xact_callback, NULL);
	RegisterSubXactCallback(pending_subxact_callback, NULL);
}
