/*-------------------------------------------------------------------------
 *
 * outcomes.c
 *	  The worker's transaction that records finished steps: it locks their
 *	  rows without waiting, writes the batch (record.c) in a subtransaction,
 *	  and if that fails, writes the steps one at a time, each in a
 *	  subtransaction of its own.
 *
 * An outcome is never dropped and never written twice:
 *	- a step whose row, or whose attribution's row, someone holds (the
 *	  careful path of cello_attribute() or cello_transaction() in an open
 *	  transaction, retry(), cancel(), a SELECT ... FOR SHARE) is skipped
 *	  (SKIP LOCKED, in id order) and kept in the worker's memory, to be
 *	  recorded when the lock is gone; the worker goes on with other work;
 *	- a step whose outcome cannot be written (a value the tables refuse,
 *	  such as a \u0000 in a Chargebee event that becomes jsonb) fails, with
 *	  the error and what its answer was in last_error, and the rest of the
 *	  batch is recorded as usual.  Before, such an error ended the worker,
 *	  which the launcher restarted to claim and send the same steps again,
 *	  without end.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "celloattr.h"
#include "record.h"
#include "worker.h"

static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr exists_plan = NULL;

static bool
holds_id(const int64 *ids, int n, int64 id)
{
	for (int i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

/*
 * Lock the rows of the jobs' steps and attributions that nobody else
 * holds; returns the jobs that may be recorded now, and in *held those
 * whose rows someone holds (both lists allocated in keep, which outlives
 * SPI's memory); a job claimed from an extension that was dropped since is
 * in neither.  A step whose row is gone (its attribution was
 * deleted) is recorded: only its log rows are written.
 *
 * Whoever adds steps to an attribution (cello_transaction(), retry(),
 * cancel()) holds its row lock until commit: once the worker has the lock,
 * the promotions and final states it writes see what they added.
 */
static List *
lock_rows(List *jobs, List **held, MemoryContext keep)
{
	ArrayColumn ids;
	int64	   *locked;
	int64	   *existing;
	int			nlocked;
	int			nexisting;
	List	   *mine = NIL;
	ListCell   *lc;
	MemoryContext old;
	Oid			extension = get_extension_oid("celloattr", false);

	celloattr_columns_init(&ids, (Oid[]) {INT8OID}, 1, list_length(jobs));
	foreach(lc, jobs)
		celloattr_column_add(&ids, Int64GetDatum(((Job *) lfirst(lc))->id), false);
	celloattr_execute_columns(&lock_plan,
			"SELECT j.id FROM celloattr.jobs j"
			"  JOIN celloattr.attributions a ON a.id = j.attribution_id"
			" WHERE j.id = ANY ($1)"
			" ORDER BY a.id, j.id"
			"   FOR NO KEY UPDATE OF j SKIP LOCKED FOR UPDATE OF a SKIP LOCKED",
			&ids, 1, SPI_OK_SELECT);
	locked = celloattr_result_int8s(CurrentMemoryContext, &nlocked);
	if (nlocked < list_length(jobs))
	{
		celloattr_execute_columns(&exists_plan,
				"SELECT id FROM celloattr.jobs WHERE id = ANY ($1)",
				&ids, 1, SPI_OK_SELECT);
		existing = celloattr_result_int8s(CurrentMemoryContext, &nexisting);
	}
	else
	{
		existing = locked;
		nexisting = nlocked;
	}
	old = MemoryContextSwitchTo(keep);
	foreach(lc, jobs)
	{
		Job		   *job = lfirst(lc);

		/*
		 * Claimed from an extension since dropped: its rows are gone, and
		 * the ids it had may be another step's now.  Nothing is written.
		 */
		if (job->extension != extension)
			continue;
		if (holds_id(locked, nlocked, job->id) || !holds_id(existing, nexisting, job->id))
			mine = lappend(mine, job);
		else
			*held = lappend(*held, job);
	}
	MemoryContextSwitchTo(old);
	return mine;
}

/*
 * Record the jobs in a subtransaction; NULL if that worked, else the
 * error, with the subtransaction rolled back.  *replay_safe is cleared if
 * a recorded job is not replay-safe.
 */
static ErrorData *
try_record(List *jobs, bool with_log, bool *replay_safe)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile error = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (!record_batch(jobs, with_log))
			*replay_safe = false;
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return error;
}

static const char *
verdict_name(JobVerdict verdict)
{
	switch (verdict)
	{
		case JOB_DONE:
			return "done";
		case JOB_FAILED:
			return "failed";
		case JOB_RETRY:
			return "to be retried";
		case JOB_SNOOZE:
			return "rate limited";
		case JOB_SUPPORT:
			return "for the support report";
		case JOB_RUNNING:
			break;
	}
	return "running";
}

/*
 * The step's outcome cannot be written: it fails with the error instead,
 * and with nothing it learned.  last_error says what the step had come to
 * and the provider's last answer, so that an operator knows whether the
 * request took effect before retry() sends it again.
 */
static void
fail_unrecordable(Job *job, const ErrorData *error)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	ereport(WARNING,
			(errmsg("celloattr worker: the outcome of step %lld (%s) could not be recorded; the step fails",
					(long long) job->id, job->kind),
			 errdetail("%s", error->message)));
	job->error = psprintf("its outcome could not be recorded (it was %s%s): %s",
						  verdict_name(job->verdict),
						  job->last_status ? psprintf(", last answer HTTP %ld", job->last_status) : "",
						  error->message);
	job->verdict = JOB_FAILED;
	job->result = NULL;
	job->plan = NULL;
	job->found_customer = NULL;
	job->follow_ups = NIL;
	job->support = NIL;
	job->index_page = NULL;
	MemoryContextSwitchTo(old);
}

/*
 * The batch could not be recorded at once: record each job on its own.
 * Returns held with the jobs that met a lock conflict added (in keep).
 */
static List *
record_one_by_one(List *mine, List *held, bool *replay_safe, MemoryContext keep)
{
	ListCell   *lc;

	foreach(lc, mine)
	{
		Job		   *job = lfirst(lc);
		List	   *one = list_make1(job);
		ErrorData  *error = try_record(one, true, replay_safe);

		if (error && !queue_is_lock_conflict(error))
		{
			fail_unrecordable(job, error);
			FreeErrorData(error);
			/* as failed, with its requests logged; or without, if they are the poison */
			error = try_record(one, true, replay_safe);
			if (error && !queue_is_lock_conflict(error))
			{
				FreeErrorData(error);
				error = try_record(one, false, replay_safe);
			}
		}
		if (error && queue_is_lock_conflict(error))
		{
			MemoryContext old = MemoryContextSwitchTo(keep);

			held = lappend(held, job);
			MemoryContextSwitchTo(old);
		}
		else if (error)
			ereport(WARNING,
					(errmsg("celloattr worker: step %lld (%s) could not be recorded even as failed; it stays running",
							(long long) job->id, job->kind),
					 errdetail("%s", error->message),
					 errhint("The next worker to start counts it as interrupted.")));
		if (error)
			FreeErrorData(error);
		list_free(one);
	}
	return held;
}

List *
record_outcomes(List *jobs)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *volatile later = jobs;

	if (jobs == NIL)
		return NIL;
	PG_TRY();
	{
		if (queue_begin("recording outcomes"))
		{
			List	   *held = NIL;
			List	   *mine;
			bool		replay_safe = true;
			ErrorData  *error;

			/* each statement of record.c reaches a batch's rows by key */
			queue_plan_lookups_by_key();
			mine = lock_rows(jobs, &held, cxt);
			error = try_record(mine, true, &replay_safe);
			if (error)
			{
				ereport(LOG,
						(errmsg("celloattr worker: could not record %d outcomes together, recording them one at a time",
								list_length(mine)),
						 errdetail("%s", error->message)));
				FreeErrorData(error);
				held = record_one_by_one(mine, held, &replay_safe, cxt);
			}

			/*
			 * The worker commits asynchronously (worker.c); a step that is
			 * not replay-safe commits synchronously, so that an acknowledged
			 * event without an idempotency key is never sent again because
			 * its outcome was lost.
			 */
			if (!replay_safe)
				queue_commit_synchronously();
			queue_commit();
			later = held;
		}
	}
	PG_CATCH();
	{
		FreeErrorData(queue_recover(cxt));
		later = jobs;
	}
	PG_END_TRY();
	return later;
}
