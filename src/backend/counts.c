/*-------------------------------------------------------------------------
 *
 * counts.c
 *	  The statement triggers of celloattr.attributions: the counts behind
 *	  celloattr.progress (celloattr.batch_counts), and a NOTIFY celloattr,
 *	  '<id>:<state>' for each attribution that finishes.
 *
 * A look at progress reads a few rows of batch_counts per batch shown,
 * never the attributions of a batch being drained.  Every statement that
 * writes attributions (the queueing functions, the worker, retry(),
 * cancel(), a restore, a DBA's UPDATE) passes through here once, with its
 * rows before and after (transition tables): the rows after count +1 for
 * their state, the rows before -1, per batch.  A batch whose counts did not
 * move (the worker writing what it learned into an attribution's plan) costs
 * a scan of those rows and nothing else; the others get one statement that
 * adds a row of the changes per batch to batch_counts.  A change of states
 * also folds into that row the rows of its batches that no other
 * transaction holds (FOR UPDATE SKIP LOCKED).  Nothing ever waits for a row
 * of batch_counts, the worker least of all: an application's open
 * transaction that cancel()ed one attribution of a bulk repair holds that
 * batch's row, and the worker, recording the rest of the batch, adds rows
 * of its own beside it.  A batch keeps about one row per transaction
 * changing it at the same time, plus a row per INSERT of its queueing
 * statement until the worker's first claim folds them.
 *
 * An attribution finishes when a statement writes it in a final state with
 * finished_at = now(): the worker's, cancel()'s and a superseding repair's
 * (in the transaction that records it, so a listener reads the state it
 * heard), or a dry run finished in the call itself; not a restored row, nor
 * one finished earlier and written again (the same notice twice in one
 * transaction is delivered once).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "celloattr.h"

/* The counts of batch_counts, in its column order after batch. */
enum
{
	N_QUEUED, N_RUNNING, N_DONE, N_NEEDS_SUPPORT, N_FAILED, N_CANCELLED,
	N_PLANNED, N_STRIPE_UNFINISHED, N_CHARGEBEE_UNFINISHED,
	N_SIGNUP_UNFINISHED, NCOUNTS
};

/* The states, as N_QUEUED .. N_PLANNED. */
static const char *const state_names[] = {
	"queued", "running", "done", "needs_support", "failed", "cancelled", "planned"
};

typedef struct BatchDelta
{
	int64		batch;			/* the hash key */
	int32		counts[NCOUNTS];
	TimestampTz last_finished_at;	/* 0: none */
} BatchDelta;

/* The columns read, by number in the table's descriptor. */
typedef struct Columns
{
	int			id;
	int			batch;
	int			state;
	int			gateway;
	int			signup_via_api;
	int			finished_at;
} Columns;

static SPIPlanPtr add_plan = NULL;
static SPIPlanPtr fold_plan = NULL;
static SPIPlanPtr truncate_plan = NULL;

static int
column(TupleDesc desc, const char *name)
{
	int			attno = SPI_fnumber(desc, name);

	if (attno <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("celloattr.attributions has no column \"%s\"", name),
				 errhint("Run ALTER EXTENSION celloattr UPDATE.")));
	return attno;
}

static bool
text_is(Datum d, const char *s)
{
	text	   *t = DatumGetTextPP(d);
	size_t		len = strlen(s);

	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

/*
 * Count one side of the statement (sign +1: the rows after it, -1: before)
 * into deltas; the rows after it that finished in this transaction are
 * announced.
 */
static void
count_rows(Tuplestorestate *rows, TupleDesc desc, const Columns *c, int sign,
		   HTAB *deltas)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	tuplestore_select_read_pointer(rows, tuplestore_alloc_read_pointer(rows, EXEC_FLAG_REWIND));
	tuplestore_rescan(rows);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		bool		isnull;
		bool		no_batch;
		bool		no_finish;
		int64		batch = DatumGetInt64(slot_getattr(slot, c->batch, &no_batch));
		Datum		state = slot_getattr(slot, c->state, &isnull);
		TimestampTz finished_at = DatumGetTimestampTz(slot_getattr(slot, c->finished_at,
																   &no_finish));
		int			s;
		BatchDelta *d;
		bool		found;

		for (s = 0; s < (int) lengthof(state_names); s++)
			if (text_is(state, state_names[s]))
				break;
		if (s == (int) lengthof(state_names))
			continue;			/* the table's CHECK allows no other */
		if (sign > 0 && s > N_RUNNING && !no_finish && finished_at == now)
			Async_Notify("celloattr",
						 psprintf(INT64_FORMAT ":%s",
								  DatumGetInt64(slot_getattr(slot, c->id, &isnull)),
								  state_names[s]));
		if (no_batch)
			continue;			/* queued under 1.0: in no batch */

		d = hash_search(deltas, &batch, HASH_ENTER, &found);
		if (!found)
		{
			memset(d->counts, 0, sizeof(d->counts));
			d->last_finished_at = 0;
		}
		d->counts[s] += sign;
		if (s <= N_RUNNING)
		{
			Datum		gateway = slot_getattr(slot, c->gateway, &isnull);

			if (text_is(gateway, "stripe"))
				d->counts[N_STRIPE_UNFINISHED] += sign;
			else if (text_is(gateway, "chargebee"))
				d->counts[N_CHARGEBEE_UNFINISHED] += sign;
			if (DatumGetBool(slot_getattr(slot, c->signup_via_api, &isnull)))
				d->counts[N_SIGNUP_UNFINISHED] += sign;
		}
		else if (sign > 0 && !no_finish)
			d->last_finished_at = Max(d->last_finished_at, finished_at);
	}
	ExecDropSingleTupleTableSlot(slot);
}

/*
 * Run statements on batch_counts as its owner (the trigger runs as whoever
 * wrote attributions), with nothing of the caller's search_path.
 */
typedef struct AsOwner
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} AsOwner;

static void
begin_as_owner(AsOwner *as, Oid owner)
{
	GetUserIdAndSecContext(&as->save_userid, &as->save_sec_context);
	SetUserIdAndSecContext(owner, as->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	as->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");
}

static void
end_as_owner(AsOwner *as)
{
	SPI_finish();
	AtEOXact_GUC(true, as->save_nestlevel);
	SetUserIdAndSecContext(as->save_userid, as->save_sec_context);
}

/* The rows of the changes, from the array parameters $1..$12. */
#define DELTA_ROWS \
	"ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)," \
	"     pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5)," \
	"     pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8)," \
	"     pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11)," \
	"     pg_catalog.unnest($12))" \
	"  AS d(batch, queued, running, done, needs_support, failed, cancelled, planned," \
	"       stripe_unfinished, chargebee_unfinished, signup_unfinished, last_finished_at)"

/*
 * Add the batches whose counts moved to batch_counts; with fold, folding
 * in the rows of theirs that nobody holds.
 */
static void
write_deltas(HTAB *deltas, Oid owner, bool fold)
{
	static const Oid types[NCOUNTS + 2] = {INT8OID,
		INT4OID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID,
	INT4OID, INT4OID, INT4OID, TIMESTAMPTZOID};
	ArrayColumn cols[NCOUNTS + 2];
	HASH_SEQ_STATUS seq;
	BatchDelta *d;
	AsOwner		as;

	celloattr_columns_init(cols, types, NCOUNTS + 2, hash_get_num_entries(deltas));
	hash_seq_init(&seq, deltas);
	while ((d = hash_seq_search(&seq)) != NULL)
	{
		bool		moved = false;

		/* a plan written, or a row updated in place: nothing to add */
		for (int i = 0; i < NCOUNTS; i++)
			moved |= d->counts[i] != 0;
		if (!moved)
			continue;
		celloattr_column_add(&cols[0], Int64GetDatum(d->batch), false);
		for (int i = 0; i < NCOUNTS; i++)
			celloattr_column_add(&cols[1 + i], Int32GetDatum(d->counts[i]), false);
		celloattr_column_add(&cols[NCOUNTS + 1], TimestampTzGetDatum(d->last_finished_at),
							 d->last_finished_at == 0);
	}
	if (cols[0].n == 0)
		return;

	begin_as_owner(&as, owner);
	if (fold)
		celloattr_execute_columns(&fold_plan,
				"WITH d AS (SELECT * FROM " DELTA_ROWS "), folded AS ("
				"  DELETE FROM celloattr.batch_counts b"
				"   WHERE b.ctid = ANY (ARRAY("
				"          SELECT h.ctid FROM celloattr.batch_counts h"
				"           WHERE h.batch = ANY ($1) FOR UPDATE SKIP LOCKED))"
				"  RETURNING b.*"
				")"
				"INSERT INTO celloattr.batch_counts"
				" SELECT x.batch, pg_catalog.sum(x.queued), pg_catalog.sum(x.running),"
				"        pg_catalog.sum(x.done), pg_catalog.sum(x.needs_support),"
				"        pg_catalog.sum(x.failed), pg_catalog.sum(x.cancelled),"
				"        pg_catalog.sum(x.planned), pg_catalog.sum(x.stripe_unfinished),"
				"        pg_catalog.sum(x.chargebee_unfinished), pg_catalog.sum(x.signup_unfinished),"
				"        pg_catalog.max(x.last_finished_at)"
				"   FROM (SELECT * FROM d UNION ALL SELECT * FROM folded) x"
				"  GROUP BY x.batch",
				cols, NCOUNTS + 2, SPI_OK_INSERT);
	else
		celloattr_execute_columns(&add_plan,
				"INSERT INTO celloattr.batch_counts SELECT * FROM " DELTA_ROWS,
				cols, NCOUNTS + 2, SPI_OK_INSERT);
	end_as_owner(&as);
}

PG_FUNCTION_INFO_V1(cello_count_attributions);
Datum
cello_count_attributions(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	Columns		c;
	HASHCTL		ctl;
	HTAB	   *deltas;
	MemoryContext cxt;
	MemoryContext old;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_STATEMENT(trig->tg_event) ||
		!TRIGGER_FIRED_AFTER(trig->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("celloattr._count_attributions() must run as an after statement trigger")));
	rel = trig->tg_relation;
	if (TRIGGER_FIRED_BY_TRUNCATE(trig->tg_event))
	{
		AsOwner		as;

		begin_as_owner(&as, rel->rd_rel->relowner);
		celloattr_execute(celloattr_prepare(&truncate_plan, "DELETE FROM celloattr.batch_counts",
											0, NULL),
						  NULL, NULL, SPI_OK_DELETE);
		end_as_owner(&as);
		return PointerGetDatum(NULL);
	}

	desc = RelationGetDescr(rel);
	c.id = column(desc, "id");
	c.batch = column(desc, "batch");
	c.state = column(desc, "state");
	c.gateway = column(desc, "gateway");
	c.signup_via_api = column(desc, "signup_via_api");
	c.finished_at = column(desc, "finished_at");

	cxt = AllocSetContextCreate(CurrentMemoryContext, "celloattr batch counts",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(BatchDelta);
	ctl.hcxt = cxt;
	deltas = hash_create("celloattr batch counts", 16, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	if (trig->tg_newtable)
		count_rows(trig->tg_newtable, desc, &c, 1, deltas);
	if (trig->tg_oldtable)
		count_rows(trig->tg_oldtable, desc, &c, -1, deltas);
	/*
	 * Changes of state fold.  New rows need not (the worker's first claim
	 * of a bulk repair folds its rows), nor can a transaction that reads
	 * from one snapshot: locking a row another transaction folded since
	 * would fail it with a serialization error.
	 */
	write_deltas(deltas, rel->rd_rel->relowner,
				 TRIGGER_FIRED_BY_UPDATE(trig->tg_event) && !IsolationUsesXactSnapshot());
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return PointerGetDatum(NULL);
}
