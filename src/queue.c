/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The worker's short transactions on the queue tables: claim due
 *	  steps, record outcomes.  No HTTP happens while one is open.
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
#include "common/pg_prng.h"
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
#include "providers.h"
#include "worker.h"

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr requeue_plan = NULL;
static SPIPlanPtr finish_job_plan = NULL;
static SPIPlanPtr log_plan = NULL;
static SPIPlanPtr learned_plan = NULL;
static SPIPlanPtr follow_up_plan = NULL;
static SPIPlanPtr support_plan = NULL;
static SPIPlanPtr promote_plan = NULL;
static SPIPlanPtr settle_plan = NULL;
static SPIPlanPtr lock_attribution_plan = NULL;

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
static bool
begin(const char *activity)
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

static void
commit(void)
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
	if (!begin("requeueing steps of a previous worker"))
		return false;
	celloattr_prepare(&requeue_plan,
					  "UPDATE celloattr.jobs SET state = 'queued', lease_until = NULL, next_attempt_at = now() "
					  " WHERE state = 'running'",
					  0, NULL);
	celloattr_execute(requeue_plan, NULL, NULL, SPI_OK_UPDATE);
	if (SPI_processed > 0)
		elog(LOG, "celloattr worker: %llu step(s) left running by a previous worker are due again",
			 (unsigned long long) SPI_processed);
	commit();
	return true;
}

static char *
copy_text(HeapTuple tuple, TupleDesc desc, int col)
{
	return SPI_getvalue(tuple, desc, col);
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
 * lease) and commit.  *next_due is set to the seconds until the next step
 * that is not due yet falls due (at most cap).
 */
List *
queue_claim(int max_jobs, MemoryContext jobs_cxt, double *next_due)
{
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		values[2];
	List	   *jobs = NIL;
	bool		isnull;
	Datum		d;

	*next_due = -1;
	if (!begin("claiming due steps"))
		return NIL;

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
	values[1] = Int32GetDatum(celloattr_lease);
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

	celloattr_prepare(&next_due_plan,
			"SELECT extract(epoch FROM min(next_attempt_at) - now())::float8"
			"  FROM celloattr.jobs WHERE state = 'queued'",
			0, NULL);
	celloattr_execute(next_due_plan, NULL, NULL, SPI_OK_SELECT);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		*next_due = Max(0.0, DatumGetFloat8(d));

	commit();
	return jobs;
}

/* ------------------------------------------------------------ outcomes */

static char *
redact(char *out, const char *secret)
{
	size_t		len = strlen(secret);
	char	   *hit;

	/* short values would match by accident, and are not keys anyway */
	if (len < 8)
		return out;
	while ((hit = strstr(out, secret)) != NULL)
		out = psprintf("%.*s[redacted]%s", (int) (hit - out), out, hit + len);
	return out;
}

/* Keys, passwords and tokens never reach a table, whatever a provider echoes. */
static char *
scrub(const char *text)
{
	const char *const secrets[] = {
		celloattr_stripe_secret_key, celloattr_chargebee_api_key,
		celloattr_chargebee_webhook_password, celloattr_cello_secret_access_key,
		NULL
	};
	const char *const *tokens = celloattr_log_secrets();
	char	   *out;

	if (text == NULL)
		return NULL;
	out = pstrdup(text);
	for (int i = 0; secrets[i]; i++)
		out = redact(out, secrets[i]);
	/* and the Cello tokens the worker holds right now */
	for (int i = 0; tokens[i]; i++)
		out = redact(out, tokens[i]);
	return out;
}

static char *
clip(const char *text, size_t len)
{
	if (text == NULL)
		return NULL;
	if (len > (size_t) celloattr_log_body_limit)
		return psprintf("%.*s... [%zu bytes]", celloattr_log_body_limit, text, len);
	return pnstrdup(text, len);
}

static void
log_exchange(Job *job, HttpExchange *ex)
{
	Oid			types[13] = {INT8OID, INT8OID, INT4OID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID};
	Datum		values[13];
	char		nulls[13];

	memset(nulls, ' ', sizeof(nulls));
	celloattr_prepare(&log_plan,
			"INSERT INTO celloattr.http_log (job_id, attribution_id, attempt, provider, method,"
			"  url, request_headers, request_body, status, response_body, error, started_at,"
			"  duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
			13, types);
	values[0] = Int64GetDatum(job->id);
	values[1] = Int64GetDatum(job->attribution_id);
	values[2] = Int32GetDatum(job->attempts);
	values[3] = CStringGetTextDatum(ex->provider);
	values[4] = CStringGetTextDatum(ex->method);
	values[5] = CStringGetTextDatum(scrub(ex->url));
	values[6] = CStringGetTextDatum(scrub(http_logged_headers(ex)));
	values[7] = celloattr_text_datum(scrub(clip(ex->body, ex->body_len)), &nulls[7]);
	values[8] = Int32GetDatum((int32) ex->status);
	nulls[8] = ex->started_at && !ex->error ? ' ' : 'n';
	values[9] = celloattr_text_datum(scrub(clip(ex->response, ex->response_len)), &nulls[9]);
	values[10] = celloattr_text_datum(scrub(ex->error), &nulls[10]);
	values[11] = TimestampTzGetDatum(ex->started_at ? ex->started_at : GetCurrentTimestamp());
	values[12] = Float8GetDatum(ex->duration_ms);
	celloattr_execute(log_plan, values, nulls, SPI_OK_INSERT);
}

/* What a successful step learned: the customer, the plan, follow-ups, the report. */
static void
record_learned(Job *job, int16 stage)
{
	Datum		values[13];
	char		nulls[13];
	ListCell   *lc;

	memset(nulls, ' ', sizeof(nulls));
	celloattr_prepare(&learned_plan,
			"UPDATE celloattr.attributions"
			"   SET customer_id = coalesce(customer_id, $2), plan = plan || coalesce($3::jsonb, '{}')"
			" WHERE id = $1",
			3, (Oid[]) {INT8OID, TEXTOID, TEXTOID});
	values[0] = Int64GetDatum(job->attribution_id);
	values[1] = celloattr_text_datum(job->found_customer, &nulls[1]);
	values[2] = celloattr_text_datum(job->plan, &nulls[2]);
	celloattr_execute(learned_plan, values, nulls, SPI_OK_UPDATE);

	celloattr_prepare(&follow_up_plan,
			"INSERT INTO celloattr.jobs (attribution_id, kind, stage, state, payload, idempotency_key)"
			" SELECT $1, $2, $3, $4, $5::jsonb,"
			"        'ca-' || i.install_id || '-' || $1 || '-' || $2 || coalesce('-' || $6, '')"
			"   FROM celloattr.installation i"
			" ON CONFLICT (idempotency_key) DO NOTHING",
			6, (Oid[]) {INT8OID, TEXTOID, INT2OID, TEXTOID, TEXTOID, TEXTOID});
	foreach(lc, job->follow_ups)
	{
		FollowUp   *f = lfirst(lc);

		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int64GetDatum(job->attribution_id);
		values[1] = CStringGetTextDatum(f->kind);
		values[2] = Int16GetDatum(stage + 1);
		values[3] = CStringGetTextDatum(job->dry_run && f->mutates ? "planned" : "queued");
		values[4] = CStringGetTextDatum(f->payload);
		values[5] = celloattr_text_datum(f->key_suffix, &nulls[5]);
		celloattr_execute(follow_up_plan, values, nulls, SPI_OK_INSERT);
	}

	/* a dry run only plans: what would go to support is in its plan */
	if (job->dry_run)
		return;
	celloattr_prepare(&support_plan,
			"INSERT INTO celloattr.support_items (attribution_id, job_id, transaction_id, trigger,"
			"  event_timestamp, price, currency, subscription_id, invoice_id, interval, seats,"
			"  product_key, reason)"
			" VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8, $9, $10, $11, $12, $13)"
			" ON CONFLICT DO NOTHING",
			13, (Oid[]) {INT8OID, INT8OID, INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID});
	foreach(lc, job->support)
	{
		SupportItem *s = lfirst(lc);

		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int64GetDatum(job->attribution_id);
		values[1] = Int64GetDatum(job->id);
		values[2] = Int64GetDatum(s->transaction_id);
		nulls[2] = s->transaction_id ? ' ' : 'n';
		values[3] = CStringGetTextDatum(s->trigger);
		values[4] = TimestampTzGetDatum(s->event_timestamp);
		nulls[4] = s->has_timestamp ? ' ' : 'n';
		values[5] = celloattr_text_datum(s->price, &nulls[5]);
		values[6] = celloattr_text_datum(s->currency, &nulls[6]);
		values[7] = celloattr_text_datum(s->subscription_id, &nulls[7]);
		values[8] = celloattr_text_datum(s->invoice_id, &nulls[8]);
		values[9] = celloattr_text_datum(s->interval, &nulls[9]);
		values[10] = Int32GetDatum(s->seats);
		nulls[10] = s->has_seats ? ' ' : 'n';
		values[11] = celloattr_text_datum(s->product_key, &nulls[11]);
		values[12] = CStringGetTextDatum(s->reason);
		celloattr_execute(support_plan, values, nulls, SPI_OK_INSERT);
	}
}

/* Seconds to wait before the next attempt: doubling, capped, jittered. */
static double
backoff_seconds(int attempts)
{
	double		delay = celloattr_backoff_base / 1000.0;

	for (int i = 1; i < attempts && delay < celloattr_backoff_max; i++)
		delay *= 2;
	delay = Min(delay, (double) celloattr_backoff_max);
	/* spread retries of a burst so they do not hit the provider together */
	return delay * (0.5 + 0.5 * pg_prng_double(&pg_global_prng_state));
}

/*
 * Record one step's outcome with everything it learned, then move its
 * attribution on: promote the next stage, or settle the final state.
 */
static void
record_one(Job *job)
{
	const char *state;
	double		delay = 0;
	int			refund_attempt = 0;
	ListCell   *lc;
	Datum		values[8];
	char		nulls[8];
	int16		stage;
	bool		isnull;

	switch (job->verdict)
	{
		case JOB_DONE:
			state = "done";
			break;
		case JOB_SUPPORT:
			state = "support";
			break;
		case JOB_SNOOZE:
			state = "queued";
			delay = job->snooze_seconds;
			refund_attempt = 1;
			break;
		case JOB_RETRY:
			if (job->attempts >= celloattr_max_attempts)
			{
				job->error = psprintf("gave up after %d attempts: %s", job->attempts, job->error);
				/* settled once, also if this outcome must be recorded again */
				job->verdict = JOB_FAILED;
				state = "failed";
				if (job->ops && job->ops->give_up)
				{
					/* an event for Cello: it goes to the support report */
					MemoryContext old = MemoryContextSwitchTo(job->cxt);

					job->ops->give_up(job);
					MemoryContextSwitchTo(old);
					job->verdict = JOB_SUPPORT;
					state = "support";
				}
			}
			else
			{
				state = "queued";
				delay = backoff_seconds(job->attempts);
			}
			break;
		case JOB_FAILED:
		default:
			state = "failed";
			break;
	}

	foreach(lc, job->exchanges)
		log_exchange(job, (HttpExchange *) lfirst(lc));

	/*
	 * Whoever adds steps to this attribution (cello_transaction(), retry(),
	 * cancel()) holds its row lock until commit: take it first, so the
	 * promotion and the final state below see what they added.
	 */
	values[0] = Int64GetDatum(job->attribution_id);
	celloattr_prepare(&lock_attribution_plan,
			"SELECT 1 FROM celloattr.attributions WHERE id = $1 FOR UPDATE",
			1, (Oid[]) {INT8OID});
	celloattr_execute(lock_attribution_plan, values, NULL, SPI_OK_SELECT);

	memset(nulls, ' ', sizeof(nulls));
	celloattr_prepare(&finish_job_plan,
			"UPDATE celloattr.jobs"
			"   SET state = $2, attempts = attempts - $3, lease_until = NULL,"
			"       next_attempt_at = now() + make_interval(secs => $4),"
			"       last_status = $5, last_error = $6,"
			"       result = coalesce($7::jsonb, result),"
			"       finished_at = CASE WHEN $2 IN ('done', 'failed', 'support') THEN now() END"
			" WHERE id = $1 AND state = 'running'"
			" RETURNING stage",
			7, (Oid[]) {INT8OID, TEXTOID, INT4OID, FLOAT8OID, INT4OID, TEXTOID, TEXTOID});
	values[0] = Int64GetDatum(job->id);
	values[1] = CStringGetTextDatum(state);
	values[2] = Int32GetDatum(refund_attempt);
	values[3] = Float8GetDatum(delay);
	values[4] = Int32GetDatum((int32) job->last_status);
	nulls[4] = job->last_status ? ' ' : 'n';
	values[5] = celloattr_text_datum(scrub(job->error), &nulls[5]);
	values[6] = celloattr_text_datum(job->result, &nulls[6]);
	celloattr_execute(finish_job_plan, values, nulls, SPI_OK_UPDATE_RETURNING);

	/* cancelled (or superseded) while in flight: the log is all we keep */
	if (SPI_processed == 1)
	{
		stage = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
		if (job->verdict == JOB_DONE || job->verdict == JOB_SUPPORT)
			record_learned(job, stage);

		values[0] = Int64GetDatum(job->attribution_id);
		celloattr_prepare(&promote_plan,
				"UPDATE celloattr.jobs w SET state = 'queued', next_attempt_at = now()"
				" WHERE w.attribution_id = $1 AND w.state = 'waiting'"
				"   AND NOT EXISTS (SELECT 1 FROM celloattr.jobs p"
				"                    WHERE p.attribution_id = $1 AND p.stage < w.stage"
				"                      AND p.state NOT IN ('done', 'support', 'planned'))",
				1, (Oid[]) {INT8OID});
		celloattr_execute(promote_plan, values, NULL, SPI_OK_UPDATE);

		celloattr_prepare(&settle_plan,
				"WITH s AS ("
				"  SELECT count(*) FILTER (WHERE state IN ('queued', 'running')) AS active,"
				"         count(*) FILTER (WHERE state = 'waiting') AS waiting,"
				"         count(*) FILTER (WHERE state = 'failed') AS failed,"
				"         (array_agg(last_error ORDER BY finished_at DESC)"
				"            FILTER (WHERE state = 'failed'))[1] AS error"
				"    FROM celloattr.jobs WHERE attribution_id = $1)"
				"UPDATE celloattr.attributions a"
				"   SET state = CASE WHEN s.failed > 0 THEN 'failed'"
				"                    WHEN a.dry_run THEN 'planned'"
				"                    WHEN EXISTS (SELECT 1 FROM celloattr.support_items i"
				"                                  WHERE i.attribution_id = a.id) THEN 'needs_support'"
				"                    ELSE 'done' END,"
				"       finished_at = now(), last_error = s.error"
				"  FROM s"
				" WHERE a.id = $1 AND a.state IN ('queued', 'running')"
				"   AND s.active = 0 AND (s.waiting = 0 OR s.failed > 0)",
				1, (Oid[]) {INT8OID});
		celloattr_execute(settle_plan, values, NULL, SPI_OK_UPDATE);
	}
}

/*
 * Record the outcomes of finished steps, all in one transaction.  False if
 * the tables could not be locked at once (the caller tries again later).
 *
 * The worker commits asynchronously (see worker.c); a batch holding the
 * outcome of a step that is not replay-safe commits synchronously, so an
 * acknowledged event without an idempotency key is never sent again
 * because its outcome was lost.
 */
bool
queue_record_batch(List *jobs)
{
	ListCell   *lc;
	bool		replay_safe = true;

	if (!begin("recording outcomes"))
		return false;
	foreach(lc, jobs)
	{
		Job		   *job = lfirst(lc);

		if (job->ops == NULL || !job->ops->replay_safe)
			replay_safe = false;
		record_one(job);
	}
	if (!replay_safe)
		(void) set_config_option("synchronous_commit", "on", PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	commit();
	return true;
}
