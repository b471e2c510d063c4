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
 * commits or prepares.  A subtransaction that aborts takes its rows with
 * it, wherever they are in the batch.  A batch written inside a
 * subtransaction may hold rows of an enclosing level: subxact.c keeps a
 * copy of those and, if the subtransaction aborts, puts them back into the
 * batch with their ids, to be written again.
 *
 * Each row is inserted as the role that queued it (the owner of the
 * SECURITY DEFINER function that called us), in one INSERT per run of rows
 * of one owner.
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
#include "subxact.h"

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
	C_REQUESTED_BY, C_STATE, C_FINISHED_AT, C_BATCH, NCOLUMNS
};
const Oid	celloattr_column_types[NCOLUMNS] = {
	INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	BOOLOID, TIMESTAMPTZOID, TEXTOID, BOOLOID, BOOLOID,
	TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID
};

/* The columns of their first steps. */
enum
{
	J_ATTRIBUTION, J_KIND, J_STAGE, J_STATE, NJOBCOLUMNS
};
const Oid	celloattr_step_column_types[NJOBCOLUMNS] = {
	INT8OID, TEXTOID, INT2OID, TEXTOID
};

StaticAssertDecl(NCOLUMNS == PENDING_NCOLUMNS, "pending.h counts the columns");
StaticAssertDecl(NJOBCOLUMNS == PENDING_NSTEPCOLUMNS, "pending.h counts the step columns");

typedef struct Pending
{
	MemoryContext context;		/* the rows, their values, the hash table */
	HTAB	   *users;			/* PendingUserKey, of each row */
	int			max_depth;		/* deepest statement nesting of a call */
	int			nrows;
	int			maxrows;		/* room in rows[] */
	PendingRow *rows;			/* in no order of level */
} Pending;

static Pending *pending = NULL;

/* attribute.c's careful path runs: what it reads is never a queued user */
static bool holding = false;

/* Looked up by each call (the extension may be re-created any time). */
static Oid	schema_oid;
static Oid	attributions_oid;
static Oid	live_user_index_oid;
static Oid	id_sequence_oid;

/* [1]: with attributions.batch; [0]: for the objects of 1.0, without */
static SPIPlanPtr flush_plans[2];

static uint32
user_key_hash(const void *key, Size keysize)
{
	const PendingUserKey *k = key;

	return hash_bytes((const unsigned char *) k->new_user_id,
					  strlen(k->new_user_id)) ^
		hash_bytes((const unsigned char *) k->gateway, strlen(k->gateway)) ^
		(k->dry_run ? 0x9e3779b9 : 0);
}

static int
user_key_match(const void *key1, const void *key2, Size keysize)
{
	const PendingUserKey *a = key1;
	const PendingUserKey *b = key2;

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
	pending->maxrows = 16;
	pending->rows = palloc(pending->maxrows * sizeof(PendingRow));
	ctl.keysize = sizeof(PendingUserKey);
	ctl.entrysize = sizeof(PendingUserKey);
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

/*
 * Room for one more row at the batch's end (not yet counted).  The array
 * starts small (most statements queue a few rows) and grows; a call flushes
 * a full batch first, and rows given back by an aborted subtransaction are
 * those the batch held when it began, so it stays near PENDING_BATCH rows.
 */
static PendingRow *
next_row(void)
{
	if (pending->nrows == pending->maxrows)
	{
		pending->maxrows *= 2;
		pending->rows = repalloc(pending->rows, pending->maxrows * sizeof(PendingRow));
	}
	return &pending->rows[pending->nrows];
}

/* The row is complete: count it, and find it by its user. */
static void
add_row(PendingRow *row)
{
	(void) hash_search(pending->users, &row->key, HASH_ENTER, NULL);
	pending->max_depth = Max(pending->max_depth, row->depth);
	pending->nrows++;
}

void
celloattr_pending_requeue(const PendingRow *row)
{
	MemoryContext old;

	/* a row was lent, so a batch was written: the batch exists */
	Assert(pending != NULL);
	old = MemoryContextSwitchTo(pending->context);
	celloattr_row_copy(next_row(), row);
	add_row(&pending->rows[pending->nrows]);
	MemoryContextSwitchTo(old);
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
live_attribution_exists(const PendingUserKey *key)
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
	scan = celloattr_index_beginscan(heap, index, &dirty, 3, 0);
	index_rescan(scan, keys, 3, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(heap, NoLock);
	return found;
}

/* One INSERT of the batch: its rows' owner and its array parameters. */
typedef struct FlushGroup
{
	Oid			owner;
	int			nsteps;
	Oid			types[NCOLUMNS + NJOBCOLUMNS];
	Datum		params[NCOLUMNS + NJOBCOLUMNS];
} FlushGroup;

/* The arrays of n rows (they copy the values: the batch may go). */
static FlushGroup *
group_rows(const PendingRow *rows, int n)
{
	FlushGroup *g = palloc(sizeof(FlushGroup));
	ArrayColumn cols[NCOLUMNS + NJOBCOLUMNS];

	celloattr_columns_init(cols, celloattr_column_types, NCOLUMNS, n);
	celloattr_columns_init(cols + NCOLUMNS, celloattr_step_column_types, NJOBCOLUMNS,
						   n * CELLOATTR_MAX_FIRST_STEPS);
	for (int i = 0; i < n; i++)
	{
		for (int c = 0; c < NCOLUMNS; c++)
			celloattr_column_add(&cols[c], rows[i].values[c], rows[i].nulls[c]);
		for (int s = 0; s < rows[i].nsteps; s++)
			for (int c = 0; c < NJOBCOLUMNS; c++)
				celloattr_column_add(&cols[NCOLUMNS + c], rows[i].steps[s][c],
									 rows[i].step_nulls[s][c]);
	}
	g->owner = rows[0].owner;
	g->nsteps = cols[NCOLUMNS].n;
	celloattr_column_params(cols, NCOLUMNS + NJOBCOLUMNS, g->types, g->params);
	for (int c = 0; c < NCOLUMNS + NJOBCOLUMNS; c++)
	{
		pfree(cols[c].values);
		pfree(cols[c].nulls);
	}
	return g;
}

/* The INSERT of a group (1.0's attributions lack the batch: $17 unused). */
#define FLUSH_SQL(batch_column, batch_value) \
	"WITH a AS (" \
	"  INSERT INTO celloattr.attributions" \
	"    (id, ucc, new_user_id, gateway, customer_id, email, name, organization_id," \
	"     signup_via_api, signed_up_at, reason, force, dry_run, requested_by," \
	"     state, finished_at" batch_column ")" \
	"  SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12," \
	"                       $13, $14, $15, $16" batch_value ")" \
	"), j AS (" \
	"  INSERT INTO celloattr.jobs (attribution_id, kind, stage, state, idempotency_key)" \
	"  SELECT p.id, p.kind, p.stage, p.state," \
	"         'ca-' || i.install_id || '-' || p.id || '-' || p.kind" \
	"    FROM unnest($18, $19, $20, $21) AS p(id, kind, stage, state)" \
	"         CROSS JOIN celloattr.installation i" \
	"  RETURNING 1" \
	")" \
	"SELECT count(*) FROM j"

/* Insert one group, as its owner, with nothing of the caller's search_path. */
static void
write_group(FlushGroup *g)
{
	MemoryContext flush_context = CurrentMemoryContext;
	Oid			save_userid;
	int			save_sec_context,
				save_nestlevel;
	bool		pushed_snapshot;
	Oid		   *types = g->types;
	Datum	   *params = g->params;
	bool		with_batch;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(g->owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

	/* at the end of a portal or at commit no snapshot is active any more */
	pushed_snapshot = !ActiveSnapshotSet();
	if (pushed_snapshot)
		PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");
	with_batch = celloattr_attributions_have_batch();
	celloattr_prepare(&flush_plans[with_batch],
					  with_batch ? FLUSH_SQL(", batch", ", $17") : FLUSH_SQL("", ""),
					  NCOLUMNS + NJOBCOLUMNS, types);
	PG_TRY();
	{
		celloattr_execute(flush_plans[with_batch], params, NULL, SPI_OK_SELECT);
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
	if (celloattr_first_int8() != g->nsteps)
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

/*
 * Write the batch: an INSERT of the attributions and their first steps per
 * PENDING_BATCH rows of one owner.
 */
void
celloattr_pending_flush(void)
{
	List	   *groups = NIL;
	ListCell   *lc;
	int			start = 0;

	if (!have_rows())
		return;

	while (start < pending->nrows)
	{
		int			end = start + 1;

		while (end < pending->nrows && end - start < PENDING_BATCH &&
			   pending->rows[end].owner == pending->rows[start].owner)
			end++;
		groups = lappend(groups, group_rows(&pending->rows[start], end - start));
		start = end;
	}

	/*
	 * Copies of what an abort of this subtransaction would take away; then
	 * the batch is empty before any SQL runs (which may look at it).  A row
	 * is in the batch or lent, never both.
	 */
	celloattr_lend_rows(pending->rows, pending->nrows);
	pending_reset();
	foreach(lc, groups)
		write_group(lfirst(lc));
}

bool
celloattr_pending_usable(void)
{
	/* the hooks that write the batch are in place from the start only
	 * when the library is preloaded */
	return celloattr_preloaded && !celloattr_am_worker;
}

static inline void
set_text(PendingRow *row, int c, const char *s)
{
	row->nulls[c] = (s == NULL);
	row->values[c] = s ? CStringGetTextDatum(s) : (Datum) 0;
}

static inline void
set_value(PendingRow *row, int c, Datum value, bool isnull)
{
	row->values[c] = value;
	row->nulls[c] = isnull;
}

int64
celloattr_pending_queue(const QueuedAttribution *a)
{
	const AttributionRequest *req = a->req;
	PendingUserKey key;
	PendingRow *row;
	MemoryContext old;
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

	if (pending->nrows >= PENDING_BATCH)
		celloattr_pending_flush();

	id = nextval_internal(id_sequence_oid, false);
	old = MemoryContextSwitchTo(pending->context);
	row = next_row();
	set_value(row, C_ID, Int64GetDatum(id), false);
	set_text(row, C_UCC, req->ucc);
	set_text(row, C_USER, req->new_user_id);
	set_text(row, C_GATEWAY, req->gateway);
	set_text(row, C_CUSTOMER, req->customer_id);
	set_text(row, C_EMAIL, req->email);
	set_text(row, C_NAME, req->name);
	set_text(row, C_ORG, req->organization_id);
	set_value(row, C_SIGNUP_API, BoolGetDatum(a->signup_via_api), false);
	set_value(row, C_SIGNED_UP_AT, TimestampTzGetDatum(req->signed_up_at),
			  req->signed_up_at_isnull);
	set_text(row, C_REASON, req->reason);
	set_value(row, C_FORCE, BoolGetDatum(req->force), false);
	set_value(row, C_DRY_RUN, BoolGetDatum(req->dry_run), false);
	set_text(row, C_REQUESTED_BY, a->requested_by);
	set_text(row, C_STATE, a->state);
	set_value(row, C_FINISHED_AT,
			  TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
			  !a->finished);
	set_value(row, C_BATCH, Int64GetDatum(celloattr_join_batch(id)), false);
	row->nsteps = a->nsteps;
	for (int i = 0; i < a->nsteps; i++)
	{
		row->steps[i][J_ATTRIBUTION] = Int64GetDatum(id);
		row->steps[i][J_KIND] = CStringGetTextDatum(a->steps[i].kind);
		row->steps[i][J_STAGE] = Int16GetDatum(a->steps[i].stage);
		row->steps[i][J_STATE] = CStringGetTextDatum(a->steps[i].state);
		memset(row->step_nulls[i], false, sizeof(row->step_nulls[i]));
	}
	row->key.gateway = pstrdup(req->gateway);
	row->key.new_user_id = pstrdup(req->new_user_id);
	row->key.dry_run = req->dry_run;
	row->xact_level = GetCurrentTransactionNestLevel();
	row->depth = celloattr_executor_depth;
	row->owner = GetUserId();
	add_row(row);
	MemoryContextSwitchTo(old);
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
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PREPARE:
			if (have_rows())
				pending_reset();
			celloattr_lent_forget();
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

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* the subtransaction's rows go, wherever they are in the batch */
		if (have_rows())
		{
			int			keep = 0;

			for (int i = 0; i < pending->nrows; i++)
			{
				if (pending->rows[i].xact_level >= level)
					hash_search(pending->users, &pending->rows[i].key, HASH_REMOVE, NULL);
				else
				{
					if (keep != i)
						pending->rows[keep] = pending->rows[i];
					keep++;
				}
			}
			pending->nrows = keep;
		}
		/* and the rows of enclosing levels it wrote come back */
		celloattr_lent_abort(level);
		holding = false;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		if (have_rows())
			for (int i = 0; i < pending->nrows; i++)
				if (pending->rows[i].xact_level >= level)
					pending->rows[i].xact_level = level - 1;
		celloattr_lent_commit(level);
	}
}

void
celloattr_pending_register_callbacks(void)
{
	RegisterXactCallback(pending_xact_callback, NULL);
	RegisterSubXactCallback(pending_subxact_callback, NULL);
}
