/*-------------------------------------------------------------------------
 *
 * retention.c
 *	  The worker's housekeeping: deletes HTTP log rows and finished steps
 *	  older than celloattr.retention, a small batch per transaction.
 *
 * What goes is the bulky, operational part of the record: the HTTP log
 * (with its bodies) and the steps of finished work.  What stays, for as
 * long as the user keeps it, is the record of what was repaired: the
 * attributions (state, finished_at, last_error, and in plan what the worker
 * found and did), their registered transactions and their support items.
 * An attribution row also decides what the next call does (a repeat is a
 * no-op, another ucc is a dispute, a later invoice of a Cello API user goes
 * out): deleting it would change that, so it is never deleted here.
 *
 * A step goes once nothing can need it again:
 *	- done (or reported to support): every reader of the steps (promotion,
 *	  settling, the signup check of a new transaction) takes a missing step
 *	  for a done one, so it goes once it finished long enough ago;
 *	- failed, cancelled or only planned (dry run): it goes once its repair
 *	  is over for good, superseded, cancelled or a dry run that ended
 *	  without a failure; a failed repair keeps its steps for retry().
 * Waiting, queued and running steps never go.
 *
 * Each batch is one short transaction that takes its table locks only if
 * it can have them at once, as the worker's other transactions do
 * (queue.c); rows someone holds locked are skipped, not waited for.  Each
 * reads the head of an index on the finish time (celloattr--1.0.sql), so
 * a batch costs the same however many old rows have accumulated.  An
 * ERROR in a batch is logged and rolled back (queue_recover()); the next
 * round tries again.  Functions are named with pg_catalog, operators
 * resolve through the worker's pinned search_path (session.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "celloattr.h"
#include "worker.h"

typedef struct PruneTarget
{
	const char *what;			/* for the log and pg_stat_activity */
	const char *relname;		/* the table rows are deleted from */
	bool		reads_attributions;
	const char *sql;			/* $1: retention (min), $2: batch size */
	SPIPlanPtr	plan;
} PruneTarget;

static PruneTarget targets[] = {
	{
		"HTTP log rows", "http_log", false,
		"DELETE FROM celloattr.http_log WHERE id = ANY (ARRAY("
		"  SELECT id FROM celloattr.http_log"
		"   WHERE started_at < pg_catalog.now() - pg_catalog.make_interval(mins => $1)"
		"   ORDER BY started_at LIMIT $2"
		"     FOR UPDATE SKIP LOCKED))",
		NULL
	},
	{
		"done steps", "jobs", false,
		"DELETE FROM celloattr.jobs WHERE id = ANY (ARRAY("
		"  SELECT id FROM celloattr.jobs"
		"   WHERE state IN ('done', 'support')"
		"     AND finished_at < pg_catalog.now() - pg_catalog.make_interval(mins => $1)"
		"   ORDER BY finished_at LIMIT $2"
		"     FOR UPDATE SKIP LOCKED))",
		NULL
	},
	{
		"steps of repairs that are over", "jobs", true,
		"DELETE FROM celloattr.jobs WHERE id = ANY (ARRAY("
		"  SELECT j.id FROM celloattr.jobs j"
		"    JOIN celloattr.attributions a ON a.id = j.attribution_id"
		"   WHERE j.state IN ('cancelled', 'failed', 'planned')"
		"     AND coalesce(j.finished_at, j.created_at) < pg_catalog.now() - pg_catalog.make_interval(mins => $1)"
		"     AND a.finished_at < pg_catalog.now() - pg_catalog.make_interval(mins => $1)"
		"     AND (a.superseded_by IS NOT NULL OR a.state IN ('cancelled', 'planned'))"
		"   ORDER BY coalesce(j.finished_at, j.created_at) LIMIT $2"
		"     FOR UPDATE OF j SKIP LOCKED))",
		NULL
	},
};

/* Lock one of our tables if that can be done at once. */
static bool
lock_now(Oid nsp, const char *relname, LOCKMODE mode)
{
	Oid			rel = get_relname_relid(relname, nsp);

	return OidIsValid(rel) && ConditionalLockRelationOid(rel, mode);
}

/* prune_batch() without the error handling. */
static int
delete_batch(PruneTarget *t, MemoryContext cxt)
{
	Oid			nsp;
	int			deleted = -1;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	nsp = get_namespace_oid("celloattr", true);
	/* attributions before jobs, in the same order as queue.c */
	if (OidIsValid(nsp) && celloattr_worker_may_run() &&
		(!t->reads_attributions || lock_now(nsp, "attributions", AccessShareLock)) &&
		lock_now(nsp, t->relname, RowExclusiveLock))
	{
		Datum		values[2];

		pgstat_report_activity(STATE_RUNNING, psprintf("deleting old %s", t->what));
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "celloattr: SPI_connect failed");
		celloattr_prepare(&t->plan, t->sql, 2, (Oid[]) {INT4OID, INT4OID});
		values[0] = Int32GetDatum(celloattr_retention);
		values[1] = Int32GetDatum(celloattr_retention_batch);
		deleted = celloattr_execute(t->plan, values, NULL, SPI_OK_DELETE);
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	if (deleted > 0)
	{
		/* autovacuum must learn of the dead rows to reclaim their space */
		pgstat_report_stat(false);
		ereport(DEBUG1,
				(errmsg("celloattr worker: deleted %d %s, older than celloattr.retention (%d min)",
						deleted, t->what, celloattr_retention)));
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	return deleted;
}

/*
 * Delete one batch of the target's old rows in a transaction of its own;
 * returns how many, or -1 if its tables could not be had at once (or the
 * extension is gone, or an error was logged).
 */
static int
prune_batch(PruneTarget *t)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int deleted = -1;

	PG_TRY();
	{
		deleted = delete_batch(t, cxt);
	}
	PG_CATCH();
	{
		FreeErrorData(queue_recover(cxt));
		deleted = -1;
	}
	PG_END_TRY();
	return deleted;
}

/*
 * One batch of each kind of old row; true if a batch was full, so that
 * more may be left.
 */
bool
retention_prune(void)
{
	bool		more = false;

	if (celloattr_retention <= 0)
		return false;
	for (size_t i = 0; i < lengthof(targets); i++)
		if (prune_batch(&targets[i]) >= celloattr_retention_batch)
			more = true;
	return more;
}
