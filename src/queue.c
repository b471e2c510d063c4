/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The worker's short transactions on the queue tables: how each one
 *	  starts and ends, requeueing orphaned steps, claiming due steps
 *	  (record.c records their outcomes).  No HTTP happens while one is open.
 *
 * Each transaction first takes its table locks conditionally, so the worker
 * never queues behind (or holds up) a TRUNCATE, DROP EXTENSION or pg_dump:
 * if it cannot have them at once it simply tries again later.  A missing
 * extension is not an error either: the worker idles until it is created.
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
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "dbtext.h"
#include "worker.h"

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr requeue_plan = NULL;

/* The worker's context, given back after each transaction. */
static MemoryContext caller_cxt = NULL;

/* Lock our tables if that can be done at once; false if not (or absent). */
static bool
lock_tables(void)
{
	Oid			nsp = get_namespace_oid("celloattr", true);
	Oid			jobs;
	Oid			attributions;

	if (!OidIsValid(nsp) || !OidIsValid(get_extension_oid("celloattr", true)))
		return false;
	jobs = get_relname_relid("jobs", nsp);
	attributions = get_relname_relid("attributions", nsp);
	if (!OidIsValid(jobs) || !OidIsValid(attributions))
		return false;
	if (!ConditionalLockRelationOid(attributions, RowExclusiveLock))
		return false;
	if (!ConditionalLockRelationOid(jobs, RowExclusiveLock))
		return false;
	return true;
}

/* Start a transaction on the queue; false (nothing open) if unavailable. */
bool
queue_begin(const char *activity)
{
	caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!lock_tables())
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(caller_cxt);
		return false;
	}
	pgstat_report_activity(STATE_RUNNING, activity);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");
	return true;
}

void
queue_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_cxt);
	/* without this autovacuum never learns how the queue churns */
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

bool
queue_extension_ready(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	bool		ready;

	StartTransactionCommand();
	ready = OidIsValid(get_extension_oid("celloattr", true));
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return ready;
}

/*
 * Steps left 'running' by a worker that is gone are due again, with the
 * idempotency key they had.  At start-up every running step is orphaned:
 * this is the only worker.  False if the tables could not be locked at
 * once (try again later).
 */
bool
queue_requeue_orphans(void)
{
	if (!queue_begin("requeueing steps of a previous worker"))
		return false;
	celloattr_prepare(&requeue_plan,
					  "UPDATE celloattr.jobs SET state = 'queued', lease_until = NULL, next_attempt_at = now() "
					  " WHERE state = 'running'",
					  0, NULL);
	celloattr_execute(requeue_plan, NULL, NULL, SPI_OK_UPDATE);
	if (SPI_processed > 0)
		elog(LOG, "celloattr worker: %llu step(s) left running by a previous worker are due again",
			 (unsigned long long) SPI_processed);
	queue_commit();
	return true;
}

/* A text column as the UTF-8 the worker sends providers. */
static char *
copy_text(HeapTuple tuple, TupleDesc desc, int col)
{
	return worker_text(SPI_getvalue(tuple, desc, col));
}

static bool
get_bool(HeapTuple tuple, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, col, &isnull);

	return !isnull && DatumGetBool(d);
}

/* A Job, in its own memory context, from a row of the claim. */
static Job *
job_from_row(HeapTuple tuple, TupleDesc desc, MemoryContext parent)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "celloattr job",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Job		   *job = palloc0(sizeof(Job));
	bool		isnull;
	Datum		d;

	job->cxt = cxt;
	job->id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
	job->attribution_id = DatumGetInt64(SPI_getbinval(tuple, desc, 2, &isnull));
	job->kind = copy_text(tuple, desc, 3);
	job->stage = DatumGetInt16(SPI_getbinval(tuple, desc, 4, &isnull));
	job->attempts = DatumGetInt32(SPI_getbinval(tuple, desc, 5, &isnull));
	job->idempotency_key = copy_text(tuple, desc, 6);
	job->payload = copy_text(tuple, desc, 7);
	job->ucc = copy_text(tuple, desc, 8);
	job->new_user_id = copy_text(tuple, desc, 9);
	job->gateway = copy_text(tuple, desc, 10);
	job->customer_id = copy_text(tuple, desc, 11);
	job->email = copy_text(tuple, desc, 12);
	job->name = copy_text(tuple, desc, 13);
	job->organization_id = copy_text(tuple, desc, 14);
	job->signup_via_api = get_bool(tuple, desc, 15);
	d = SPI_getbinval(tuple, desc, 16, &isnull);
	job->has_signed_up_at = !isnull;
	job->signed_up_at = isnull ? 0 : DatumGetTimestampTz(d);
	job->requested_at = DatumGetTimestampTz(SPI_getbinval(tuple, desc, 17, &isnull));
	job->force = get_bool(tuple, desc, 18);
	job->dry_run = get_bool(tuple, desc, 19);
	job->ops = job_step_ops(job->kind);
	MemoryContextSwitchTo(old);
	return job;
}

/*
 * Claim up to max_jobs due steps (state 'running', one more attempt, a
 * lease) and commit.  *next_due is set to the seconds until the next queued
 * step falls due, or -1: none, or the claim was full.
 */
/*
 * For the rest of the transaction, plan index lookups only.  The worker's
 * statements reach a few rows by key; a plan made while the queue is nearly
 * empty, or from statistics gathered while it was full of finished steps,
 * can scan or hash a whole table instead, for every batch.
 */
void
queue_plan_lookups_by_key(void)
{
	static const char *const settings[] = {"enable_seqscan", "enable_hashjoin",
	"enable_mergejoin"};

	for (int i = 0; i < (int) lengthof(settings); i++)
		(void) set_config_option(settings[i], "off", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
}

List *
queue_claim(int max_jobs, MemoryContext jobs_cxt, double *next_due)
{
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		values[2];
	List	   *jobs = NIL;
	bool		isnull;
	Datum		d;

	*next_due = -1;
	if (!queue_begin("claiming due steps"))
		return NIL;
	queue_plan_lookups_by_key();

	celloattr_prepare_replanned(&claim_plan,
			"WITH claimed AS ("
			"  UPDATE celloattr.jobs j"
			"     SET state = 'running', attempts = j.attempts + 1,"
			"         lease_until = now() + make_interval(secs => $2)"
			"    FROM celloattr.attributions a"
			"   WHERE a.id = j.attribution_id"
			"     AND j.id = ANY (ARRAY("
			"         SELECT id FROM celloattr.jobs"
			"          WHERE state = 'queued' AND next_attempt_at <= now()"
			"          ORDER BY next_attempt_at, id LIMIT $1"
			"            FOR UPDATE SKIP LOCKED))"
			"  RETURNING j.id, j.attribution_id, j.kind, j.stage, j.attempts,"
			"            j.idempotency_key, j.payload::text, a.ucc, a.new_user_id,"
			"            a.gateway, a.customer_id, a.email, a.name, a.organization_id,"
			"            a.signup_via_api, a.signed_up_at, a.requested_at, a.force,"
			"            a.dry_run"
			"), started AS ("
			"  UPDATE celloattr.attributions SET state = 'running'"
			"   WHERE id = ANY (ARRAY(SELECT attribution_id FROM claimed))"
			"     AND state = 'queued'"
			")"
			"SELECT * FROM claimed ORDER BY id",
			2, types);
	values[0] = Int32GetDatum(max_jobs);
	values[1] = Int32GetDatum(worker_lease_seconds());
	celloattr_execute(claim_plan, values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Job		   *job = job_from_row(SPI_tuptable->vals[i],
									   SPI_tuptable->tupdesc, jobs_cxt);
		/* the list must outlive SPI's memory */
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);

		jobs = lappend(jobs, job);
		MemoryContextSwitchTo(old);
	}

	/* after a full claim the worker claims again as soon as it has room */
	if (list_length(jobs) < max_jobs)
	{
		celloattr_prepare(&next_due_plan,
				"SELECT extract(epoch FROM min(next_attempt_at) - now())::float8"
				"  FROM celloattr.jobs WHERE state = 'queued'",
				0, NULL);
		celloattr_execute(next_due_plan, NULL, NULL, SPI_OK_SELECT);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*next_due = Max(0.0, DatumGetFloat8(d));
	}

	queue_commit();
	return jobs;
}
