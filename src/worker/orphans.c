/*-------------------------------------------------------------------------
 *
 * orphans.c
 *	  Steps the table shows 'running' that no worker holds: those a worker
 *	  that stopped left behind, and those still 'running' past their lease
 *	  (left so by an error, or by hand).  They are requeued with their
 *	  idempotency keys, or set aside for an operator when sending them
 *	  again could count an event twice.
 *
 * Like the rest of the worker's transactions (queue.c), these take their
 * table locks conditionally and skip the rows an application holds: a
 * held orphan is requeued by a later call.  Every function the statements
 * call is named with pg_catalog.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/memutils.h"

#include "celloattr.h"
#include "record.h"
#include "worker.h"

static SPIPlanPtr orphans_plan = NULL;
static SPIPlanPtr requeue_plan = NULL;
static SPIPlanPtr still_running_plan = NULL;
static SPIPlanPtr expired_plan = NULL;

/*
 * Orphans (steps a previous worker left running) that an application held
 * locked when they were requeued: requeued later.  NULL until the first
 * requeue committed.
 */
static int64 *orphans_left = NULL;
static int	norphans_left = 0;

/* A step the worker claimed is no orphan, even if its id was one. */
void
queue_forget_orphan(int64 id)
{
	for (int i = 0; i < norphans_left; i++)
		if (orphans_left[i] == id)
			orphans_left[i] = orphans_left[--norphans_left];
}

/*
 * Steps left 'running' by a worker that is gone are due again, with the
 * idempotency key they had; a step that was running each of the last
 * STOPS_BEFORE_SET_ASIDE times a worker stopped is set aside instead (a
 * worker that dies on it would otherwise send it again and again).  The
 * count is kept in jobs.interruptions, and reset when an outcome of the
 * step is recorded (record.c) or an operator retries it.
 *
 * At start-up every running step is an orphan: this is the only worker.
 * Orphans whose row (or attribution) an application holds are left to a
 * later call (queue_orphans_left()), while the worker serves the rest; a
 * step the worker claims is no orphan, even if its id was one.  False if
 * nothing was done: the tables could not be locked at once, or an error.
 */
bool
queue_requeue_orphans(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool done = false;

	PG_TRY();
	{
		if (queue_begin("requeueing steps of a previous worker"))
		{
			ArrayColumn params[2];
			int64	   *found = orphans_left;
			int			nfound = norphans_left;
			int64	   *left;
			int			nleft;
			int			set_aside = 0;

			if (found == NULL)
			{
				celloattr_prepare(&orphans_plan,
						"SELECT id FROM celloattr.jobs WHERE state = 'running'",
						0, NULL);
				celloattr_execute(orphans_plan, NULL, NULL, SPI_OK_SELECT);
				found = celloattr_result_int8s(TopMemoryContext, &nfound);
			}
			celloattr_columns_init(params, (Oid[]) {INT8OID, TEXTOID}, 2, nfound);
			for (int i = 0; i < nfound; i++)
				celloattr_column_add(&params[0], Int64GetDatum(found[i]), false);
			job_unrepeatable_kinds(&params[1]);

			/*
			 * The attributions are locked too: a set-aside step settles its
			 * own.  A step whose request carries no idempotency key ($2) is
			 * set aside at once: it may have been sent before the worker
			 * stopped, and sending it again could count its event twice.
			 */
			celloattr_execute_columns(&requeue_plan,
					"WITH orphan AS MATERIALIZED ("
					"  SELECT j.id, j.kind = ANY ($2) AS unrepeatable"
					"    FROM celloattr.jobs j"
					"    JOIN celloattr.attributions a ON a.id = j.attribution_id"
					"   WHERE j.id = ANY ($1) AND j.state = 'running'"
					"   ORDER BY a.id, j.id"
					"     FOR NO KEY UPDATE OF j SKIP LOCKED FOR UPDATE OF a SKIP LOCKED),"
					"verdict AS ("
					"  SELECT o.id, o.unrepeatable,"
					"         o.unrepeatable OR j.interruptions + 1 >= " CppAsString2(STOPS_BEFORE_SET_ASIDE) " AS set_aside"
					"    FROM orphan o JOIN celloattr.jobs j ON j.id = o.id)"
					"UPDATE celloattr.jobs j"
					"   SET interruptions = j.interruptions + 1, lease_until = NULL,"
					"       next_attempt_at = pg_catalog.now(),"
					"       state = CASE WHEN v.set_aside THEN 'failed' ELSE 'queued' END,"
					"       finished_at = CASE WHEN v.set_aside THEN pg_catalog.now() END,"
					"       last_error = CASE"
					"         WHEN v.unrepeatable"
					"         THEN 'set aside: the worker stopped while this step was running, and its"
					" request carries no idempotency key: it may have reached the provider, and sending"
					" it again could count the event twice; look at celloattr.http_log and the"
					" provider''s records, then celloattr.retry() runs it again'"
					"         WHEN v.set_aside"
					"         THEN 'set aside: the worker stopped while this step was running,"
					" " CppAsString2(STOPS_BEFORE_SET_ASIDE) " times in a row (the last request may have"
					" reached the provider); look at celloattr.http_log, then celloattr.retry() runs it"
					" again' ELSE j.last_error END"
					"  FROM verdict v WHERE v.id = j.id"
					" RETURNING j.attribution_id, j.state = 'failed'",
					params, 2, SPI_OK_UPDATE_RETURNING);
			if (SPI_processed > 0)
			{
				ArrayColumn settle;

				celloattr_columns_init(&settle, (Oid[]) {INT8OID}, 1, SPI_processed);
				for (uint64 i = 0; i < SPI_processed; i++)
				{
					bool		isnull;
					HeapTuple	tuple = SPI_tuptable->vals[i];

					if (DatumGetBool(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 2, &isnull)))
					{
						set_aside++;
						celloattr_column_add(&settle, SPI_getbinval(tuple, SPI_tuptable->tupdesc,
																	1, &isnull), false);
					}
				}
				ereport(LOG,
						(errmsg("celloattr worker: %llu step(s) left running by a previous worker are due again, %d set aside",
								(unsigned long long) SPI_processed - set_aside, set_aside)));
				if (set_aside > 0)
				{
					ereport(WARNING,
							(errmsg("celloattr worker: %d step(s) set aside after the worker stopped %d times in a row while they ran",
									set_aside, STOPS_BEFORE_SET_ASIDE),
							 errhint("Their last_error says so; celloattr.retry() runs them again.")));
					record_settle(&settle);
				}
			}

			/* the count of interruptions must outlive the next crash */
			queue_commit_synchronously();

			/* what an application held is still running: later */
			celloattr_execute_columns(&still_running_plan,
					"SELECT id FROM celloattr.jobs WHERE id = ANY ($1) AND state = 'running'",
					&params[0], 1, SPI_OK_SELECT);
			left = celloattr_result_int8s(TopMemoryContext, &nleft);
			queue_commit();
			if (orphans_left)
				pfree(orphans_left);
			orphans_left = left;
			norphans_left = nleft;
			done = true;
		}
	}
	PG_CATCH();
	{
		FreeErrorData(queue_recover(cxt));
	}
	PG_END_TRY();
	return done;
}

/*
 * Steps the table shows 'running' past their lease, that this worker does
 * not hold (held: the ids of its steps in flight and of outcomes waiting to
 * be written), become orphans, requeued (or set aside) by the next
 * queue_requeue_orphans() like those of a worker that died: a step the
 * worker lost track of after an error that left no outcome, or one written
 * 'running' by hand, is not left 'running' for good.
 */
void
queue_adopt_expired(const int64 *held, int nheld)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		if (queue_begin("looking for steps past their lease"))
		{
			ArrayColumn ids;
			int64	   *expired;
			int			nexpired;

			celloattr_columns_init(&ids, (Oid[]) {INT8OID}, 1, nheld);
			for (int i = 0; i < nheld; i++)
				celloattr_column_add(&ids, Int64GetDatum(held[i]), false);
			celloattr_execute_columns(&expired_plan,
					"SELECT id FROM celloattr.jobs"
					" WHERE state = 'running' AND NOT (id = ANY ($1))"
					"   AND (lease_until IS NULL OR lease_until < pg_catalog.now())",
					&ids, 1, SPI_OK_SELECT);
			expired = celloattr_result_int8s(TopMemoryContext, &nexpired);
			queue_commit();
			for (int i = 0; i < nexpired; i++)
			{
				queue_forget_orphan(expired[i]);
				orphans_left = orphans_left ?
					repalloc(orphans_left, (norphans_left + 1) * sizeof(int64)) :
					MemoryContextAlloc(TopMemoryContext, sizeof(int64));
				orphans_left[norphans_left++] = expired[i];
			}
			if (nexpired > 0)
				ereport(LOG,
						(errmsg("celloattr worker: %d step(s) still running past their lease, held by no worker",
								nexpired)));
			pfree(expired);
		}
	}
	PG_CATCH();
	{
		FreeErrorData(queue_recover(cxt));
	}
	PG_END_TRY();
}

/* Orphans still to requeue; -1 before the first requeue committed. */
int
queue_orphans_left(void)
{
	return orphans_left ? norphans_left : -1;
}
