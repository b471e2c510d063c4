/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The worker's short transactions on the queue tables: how each one
 *	  starts and ends, and claiming due steps (orphans.c requeues orphaned
 *	  ones, record.c records their outcomes).  No HTTP happens while one is
 *	  open.
 *
 * Each transaction first takes its table locks conditionally, so the worker
 * never queues behind (or holds up) a TRUNCATE, DROP EXTENSION or pg_dump:
 * if it cannot have them at once it simply tries again later.  A missing
 * extension is not an error either: the worker idles until it is created.
 * Row locks are taken with SKIP LOCKED: a step whose row, or whose
 * attribution's row, an application holds (the careful path of
 * cello_attribute() and cello_transaction(), retry(), cancel(), a DBA's
 * SELECT ... FOR SHARE) is left for a later claim; the worker never waits
 * for it, so it can neither stall nor deadlock with its callers.
 *
 * An ERROR in one of these transactions never ends the worker: the caller
 * catches it, queue_recover() rolls the transaction back, and the worker
 * tries again later.
 *
 * Every function the statements call is named with pg_catalog; operators
 * and types resolve through the worker's pinned search_path (session.c),
 * which searches pg_catalog first.
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
#include "postmaster/interrupt.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "dbtext.h"
#include "eventindex.h"
#include "record.h"
#include "worker.h"

/* Seconds before claiming again when every due step was locked. */
#define LOCKED_RETRY_SECONDS 0.25

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;

/* The worker's context, given back after each transaction. */
static MemoryContext caller_cxt = NULL;

/* Lock our tables if that can be done at once; false if not (or absent). */
static bool
lock_tables(void)
{
	Oid			nsp = get_namespace_oid("celloattr", true);
	Oid			jobs;
	Oid			attributions;

	/* the version first: it also tells the worker when the extension is gone */
	if (!celloattr_worker_may_run() || !OidIsValid(nsp))
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

/*
 * After an ERROR caught in one of the worker's transactions (or outside
 * one, in a step's code): report it to the server log, roll back whatever
 * is open (AbortCurrentTransaction also cleans up SPI, snapshots, locks,
 * buffer pins and resource owners), and return to cxt with a copy of the
 * error, allocated there.  The worker carries on.
 */
ErrorData *
queue_recover(MemoryContext cxt)
{
	ErrorData  *error;

	MemoryContextSwitchTo(cxt);
	error = CopyErrorData();
	EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return error;
}

/*
 * An error that says "someone else holds what you need" (a lock wait cut
 * by the pinned lock_timeout, a deadlock, a cancel): what failed is tried
 * again later, as it is.
 */
bool
queue_is_lock_conflict(const ErrorData *error)
{
	return error->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		error->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		error->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		error->sqlerrcode == ERRCODE_QUERY_CANCELED;
}

/*
 * Whether the extension exists at the library's version (or, with
 * any_version, at all); false also after an error (logged).
 */
bool
queue_extension_ready(bool any_version)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ready = false;

	PG_TRY();
	{
		StartTransactionCommand();
		ready = any_version ? OidIsValid(get_extension_oid("celloattr", true)) :
			celloattr_worker_may_run();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
	}
	PG_CATCH();
	{
		ready = false;
		FreeErrorData(queue_recover(cxt));
	}
	PG_END_TRY();
	return ready;
}

/*
 * Whether a look at pg_extension found no celloattr at all.  False when it
 * found one, and after an error (logged): a look that failed (a lock it may
 * not wait for, a cancel) says nothing of the extension, and must not make
 * the worker leave as if it had been dropped.
 */
bool
queue_extension_absent(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool absent = false;

	PG_TRY();
	{
		StartTransactionCommand();
		absent = !OidIsValid(get_extension_oid("celloattr", true));
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
	}
	PG_CATCH();
	{
		absent = false;
		FreeErrorData(queue_recover(cxt));
	}
	PG_END_TRY();
	return absent;
}

/*
 * The rest of this transaction commits synchronously, unlike the worker's
 * other ones (worker.c): flushed, and confirmed by the synchronous standbys
 * if there are any.  Except while the worker stops (SIGTERM): then flushed
 * here only, as a standby that is gone would hold the worker, and the
 * server's shutdown, for ever (worker_sigterm).  That risks no repeat: a
 * stopping worker claims nothing, and a standby promoted without one of
 * these outcomes finds its step running and sets it aside if it has no key.
 */
void
queue_commit_synchronously(void)
{
	/* at the source of the worker's own setting: a lower one is ignored */
	(void) set_config_option("synchronous_commit", ShutdownRequestPending ? "local" : "on",
							 PGC_SUSET, PGC_S_OVERRIDE, GUC_ACTION_LOCAL, true, 0, false);
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
job_from_row(HeapTuple tuple, TupleDesc desc, MemoryContext parent, Oid extension)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "celloattr job",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Job		   *job = palloc0(sizeof(Job));
	bool		isnull;
	Datum		d;

	job->cxt = cxt;
	job->extension = extension;
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
	d = SPI_getbinval(tuple, desc, 22, &isnull);
	if (!isnull)
	{
		/* an operator found its request at the provider (mark_delivered()) */
		StringInfoData result;

		initStringInfo(&result);
		appendStringInfoString(&result, "{\"delivered_per\": ");
		escape_json(&result, TextDatumGetCString(d));
		appendStringInfoChar(&result, '}');
		job->verdict = JOB_DONE;
		job->result = result.data;
	}
	else if (get_bool(tuple, desc, 20))
	{
		/* settled before it starts: recording it gives it up */
		job->verdict = JOB_RETRY;
		job->error = psprintf("claimed again after its last attempt (a worker stopped while it ran); not sent again");
	}
	MemoryContextSwitchTo(old);
	return job;
}

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

/* queue_claim() without the error handling. */
static List *
claim(int max_jobs, MemoryContext jobs_cxt, double *next_due)
{
	Oid			types[3] = {INT4OID, INT4OID, INT4OID};
	Datum		values[3];
	List	   *jobs = NIL;
	bool		durable = false;
	bool		isnull;
	Datum		d;
	Oid			extension;
	ListCell   *lc;

	if (!queue_begin("claiming due steps"))
		return NIL;
	extension = get_extension_oid("celloattr", false);
	queue_plan_lookups_by_key();

	/*
	 * The due steps and their attributions are locked with SKIP LOCKED, so
	 * LIMIT counts only steps the worker can have: those an application
	 * holds wait for a later claim and take no room from the others.  As
	 * nothing here waits, the order they are locked in cannot deadlock.
	 */
	celloattr_prepare_replanned(&claim_plan,
			"WITH due AS MATERIALIZED ("
			"  SELECT j.id, j.attempts >= $3 AS exhausted"
			"    FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id"
			"   WHERE j.state = 'queued' AND j.next_attempt_at <= pg_catalog.now()"
			"   ORDER BY j.next_attempt_at, j.id LIMIT $1"
			"     FOR NO KEY UPDATE OF j SKIP LOCKED FOR NO KEY UPDATE OF a SKIP LOCKED"
			"), claimed AS ("
			"  UPDATE celloattr.jobs j"
			"     SET state = 'running',"
			"         attempts = j.attempts + CASE WHEN d.exhausted THEN 0 ELSE 1 END,"
			"         lease_until = pg_catalog.now() + pg_catalog.make_interval(secs => $2)"
			"    FROM due d, celloattr.attributions a"
			"   WHERE j.id = d.id AND a.id = j.attribution_id"
			"  RETURNING j.id, j.attribution_id, j.kind, j.stage, j.attempts,"
			"            j.idempotency_key, j.payload::text, a.ucc, a.new_user_id,"
			"            a.gateway, a.customer_id, a.email, a.name, a.organization_id,"
			"            a.signup_via_api, a.signed_up_at, a.requested_at, a.force,"
			"            a.dry_run, d.exhausted, j.interruptions > 0, j.delivered_per"
			"), started AS ("
			"  UPDATE celloattr.attributions SET state = 'running'"
			"   WHERE id = ANY (ARRAY(SELECT attribution_id FROM claimed))"
			"     AND state = 'queued'"
			")"
			"SELECT * FROM claimed ORDER BY id",
			3, types);
	values[0] = Int32GetDatum(max_jobs);
	values[1] = Int32GetDatum(worker_lease_seconds());
	values[2] = Int32GetDatum(celloattr_max_attempts);
	celloattr_execute(claim_plan, values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Job		   *job = job_from_row(SPI_tuptable->vals[i],
									   SPI_tuptable->tupdesc, jobs_cxt, extension);
		/* the list must outlive SPI's memory */
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);

		jobs = lappend(jobs, job);
		MemoryContextSwitchTo(old);
		/* ours now, whatever it was before */
		queue_forget_orphan(job->id);
		if (job->ops == NULL || !job->ops->replay_safe ||
			get_bool(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 21))
			durable = true;
	}

	/* payment steps: where the event index stands for each (its own statements) */
	foreach(lc, jobs)
	{
		Job		   *job = lfirst(lc);

		if (job->ops && job->ops->index && job->verdict == JOB_RUNNING)
			index_attach(job);
	}

	/* after a full claim the worker claims again as soon as it has room */
	if (list_length(jobs) < max_jobs)
	{
		celloattr_prepare(&next_due_plan,
				/* EXTRACT is grammar for pg_catalog.extract() */
				"SELECT EXTRACT(epoch FROM pg_catalog.min(next_attempt_at) - pg_catalog.now())::float8"
				"  FROM celloattr.jobs WHERE state = 'queued'",
				0, NULL);
		celloattr_execute(next_due_plan, NULL, NULL, SPI_OK_SELECT);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*next_due = Max(0.0, DatumGetFloat8(d));
		/* due but not claimed: held by someone; look again soon, not at once */
		if (*next_due == 0.0)
			*next_due = LOCKED_RETRY_SECONDS;
	}

	/*
	 * The attempt and the 'running' state must survive a crash before the
	 * request goes out, for a step whose repeat is not harmless (no
	 * idempotency key) or one a worker already stopped on: else a worker
	 * dying on it would send it again and again, each time unseen by
	 * max_attempts and by the count of interruptions.  Other claims commit
	 * asynchronously, like the rest of the worker's writes (a lost claim
	 * only runs a replay-safe step once more, under the same key).
	 */
	if (durable)
		queue_commit_synchronously();
	queue_commit();
	return jobs;
}

/*
 * Claim up to max_jobs due steps (state 'running', one more attempt, a
 * lease) and commit; a payment step also reads, in the same transaction,
 * where the shared event index stands for it (eventindex.c).  *next_due is set to the seconds until the next queued
 * step falls due, or -1: none, or the claim was full.  Nothing is claimed
 * after an error (logged): the caller tries again later.
 *
 * A step that already used celloattr.max_attempts (its worker stopped
 * while it ran, after its last attempt) is claimed without one more: it
 * comes back settled (JOB_RETRY out of attempts), so that recording it
 * gives it up, and nothing is sent.
 */
List *
queue_claim(int max_jobs, MemoryContext jobs_cxt, double *next_due)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *volatile jobs = NIL;

	*next_due = -1;
	PG_TRY();
	{
		jobs = claim(max_jobs, jobs_cxt, next_due);
	}
	PG_CATCH();
	{
		ListCell   *lc;

		FreeErrorData(queue_recover(cxt));
		foreach(lc, jobs)
			MemoryContextDelete(((Job *) lfirst(lc))->cxt);
		jobs = NIL;
		*next_due = -1;
	}
	PG_END_TRY();
	return jobs;
}
