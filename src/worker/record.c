/*-------------------------------------------------------------------------
 *
 * record.c
 *	  Recording what a batch of the worker's finished steps did: every
 *	  request for the log, each step's verdict and what it learned, and the
 *	  next move of each attribution (outcomes.c runs it in a transaction,
 *	  with the rows locked, and falls back to one step at a time).
 *
 * The recording is set-based: a batch's rows reach each table through one
 * statement, passed as arrays that unnest() turns back into rows, so a
 * batch costs the same handful of statements however many steps it holds.
 * With a statement per step and per log row, executor start-up (and the
 * constraints and triggers it sets up) was most of the worker's time.
 *
 * The result is that of recording the steps one after another: the rows
 * of each table are written in the batch's order, and the attributions
 * move on (next stage due, or final state) once all their steps are in.
 *
 * Functions are named with pg_catalog (unnest(a, b, ...) of several arrays
 * is written as the ROWS FROM (unnest(a), unnest(b), ...) it stands for,
 * as only that form takes qualified names); operators and types resolve
 * through the worker's pinned search_path (session.c), pg_catalog first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "dbtext.h"
#include "eventindex.h"
#include "providers.h"
#include "record.h"
#include "worker.h"

/* How a step's row changes for its verdict. */
typedef struct Outcome
{
	const char *state;
	double		delay;			/* seconds until it is due again */
	int			refund;			/* 1: the attempt is given back (a 429) */
} Outcome;

static SPIPlanPtr log_plan = NULL;
static SPIPlanPtr finish_plan = NULL;
static SPIPlanPtr found_plan = NULL;
static SPIPlanPtr follow_up_plan = NULL;
static SPIPlanPtr support_plan = NULL;
static SPIPlanPtr promote_plan = NULL;
static SPIPlanPtr settle_plan = NULL;

static bool
column_holds_int8(const ArrayColumn *c, int64 value)
{
	for (int i = 0; i < c->n; i++)
		if (DatumGetInt64(c->values[i]) == value)
			return true;
	return false;
}

/* --------------------------------------------------------------- the log */

/* Every request of every step, in the order they were made. */
static void
log_requests(List *jobs)
{
	static const Oid types[13] = {INT8OID, INT8OID, INT4OID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID};
	ArrayColumn cols[13];
	ListCell   *lc;

	celloattr_columns_init(cols, types, lengthof(cols), 2 * list_length(jobs));
	foreach(lc, jobs)
	{
		Job		   *job = lfirst(lc);
		ListCell   *lc2;

		foreach(lc2, job->exchanges)
		{
			HttpExchange *ex = lfirst(lc2);

			celloattr_column_add(&cols[0], Int64GetDatum(job->id), false);
			celloattr_column_add(&cols[1], Int64GetDatum(job->attribution_id), false);
			celloattr_column_add(&cols[2], Int32GetDatum(job->attempts), false);
			celloattr_column_text(&cols[3], ex->provider);
			celloattr_column_text(&cols[4], ex->method);
			celloattr_column_text(&cols[5], log_text(ex->url, strlen(ex->url), -1));
			celloattr_column_text(&cols[6], http_logged_headers(ex));
			celloattr_column_text(&cols[7], log_text(ex->body, ex->body_len,
														   celloattr_log_body_limit));
			/* no status for a request that failed or never went out */
			celloattr_column_add(&cols[8], Int32GetDatum((int32) ex->status),
								 !ex->started_at || ex->error);
			celloattr_column_text(&cols[9], log_text(ex->response, ex->response_len,
														   celloattr_log_body_limit));
			celloattr_column_text(&cols[10], scrubbed_text(ex->error));
			celloattr_column_add(&cols[11],
								 TimestampTzGetDatum(ex->started_at ? ex->started_at
													 : GetCurrentTimestamp()),
								 false);
			celloattr_column_add(&cols[12], Float8GetDatum(ex->duration_ms), false);
		}
	}
	if (cols[0].n == 0)
		return;
	celloattr_execute_columns(&log_plan,
			"INSERT INTO celloattr.http_log (job_id, attribution_id, attempt, provider, method,"
			"  url, request_headers, request_body, status, response_body, error, started_at,"
			"  duration_ms)"
			" SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
			"                  pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
			"                  pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12),"
			"                  pg_catalog.unnest($13))",
			cols, lengthof(cols), SPI_OK_INSERT);
}

/* ------------------------------------------------------------- outcomes */

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
 * Out of attempts: the step fails, or if it stands for an event of Cello's,
 * goes to the support report.  The verdict changes, so a step whose outcome
 * is recorded again is not given up twice.
 */
static void
give_up(Job *job)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	job->error = psprintf("gave up after %d attempts: %s", job->attempts, job->error);
	job->verdict = JOB_FAILED;
	if (job->ops && job->ops->give_up)
	{
		job->ops->give_up(job);
		job->verdict = JOB_SUPPORT;
	}
	MemoryContextSwitchTo(old);
}

static Outcome
outcome_of(Job *job)
{
	Outcome		o = {"failed", 0, 0};

	switch (job->verdict)
	{
		case JOB_DONE:
			o.state = "done";
			break;
		case JOB_SUPPORT:
			o.state = "support";
			break;
		case JOB_SNOOZE:
			o.state = "queued";
			o.delay = job->snooze_seconds;
			o.refund = 1;
			break;
		case JOB_RETRY:
			if (job->attempts < celloattr_max_attempts)
			{
				o.state = "queued";
				o.delay = backoff_seconds(job->attempts);
			}
			else
			{
				give_up(job);
				o.state = job->verdict == JOB_SUPPORT ? "support" : "failed";
			}
			break;
		case JOB_FAILED:
		default:
			break;
	}
	return o;
}

/*
 * Write each step's verdict.  stages[i] is set to the stage of jobs[i], or
 * to -1 if its row was no longer running: cancelled (or superseded) while
 * in flight, the log is all that is kept of it.
 */
static void
finish_steps(Job **jobs, const Outcome *outcomes, int njobs, int16 *stages)
{
	static const Oid col_types[7] = {INT8OID, TEXTOID, INT4OID, FLOAT8OID, INT4OID,
		TEXTOID, TEXTOID};
	ArrayColumn cols[7];
	Oid			types[8];
	Datum		values[8];

	celloattr_columns_init(cols, col_types, lengthof(cols), njobs);
	for (int i = 0; i < njobs; i++)
	{
		Job		   *job = jobs[i];

		celloattr_column_add(&cols[0], Int64GetDatum(job->id), false);
		celloattr_column_text(&cols[1], outcomes[i].state);
		celloattr_column_add(&cols[2], Int32GetDatum(outcomes[i].refund), false);
		celloattr_column_add(&cols[3], Float8GetDatum(outcomes[i].delay), false);
		celloattr_column_add(&cols[4], Int32GetDatum((int32) job->last_status),
							 job->last_status == 0);
		celloattr_column_text(&cols[5], scrubbed_text(job->error));
		celloattr_column_text(&cols[6], db_json(job->result));
		stages[i] = -1;
	}
	celloattr_column_params(cols, lengthof(cols), types, values);

	/*
	 * The state the row must still be in comes as a parameter: as a constant
	 * it would let the plan read every running step through jobs_leased,
	 * whose dead entries pile up between vacuums, instead of each by id.
	 */
	types[7] = TEXTOID;
	values[7] = CStringGetTextDatum("running");
	celloattr_prepare(&finish_plan,
			"UPDATE celloattr.jobs j"
			"   SET state = o.state, attempts = j.attempts - o.refund, lease_until = NULL,"
			"       next_attempt_at = pg_catalog.now() + pg_catalog.make_interval(secs => o.delay),"
			"       last_status = o.status, last_error = o.error,"
			"       result = coalesce(o.result::jsonb, j.result),"
			"       finished_at = CASE WHEN o.state IN ('done', 'failed', 'support') THEN pg_catalog.now() END,"
			"       interruptions = 0"
			"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
			"                  pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7)) WITH ORDINALITY"
			"       AS o(id, state, refund, delay, status, error, result, n)"
			" WHERE j.id = o.id AND j.state = $8"
			" RETURNING o.n, j.stage",
			lengthof(types), types);
	celloattr_execute(finish_plan, values, NULL, SPI_OK_UPDATE_RETURNING);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		n = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));

		Assert(n >= 1 && n <= njobs);
		stages[n - 1] = DatumGetInt16(SPI_getbinval(tuple, desc, 2, &isnull));
	}
}

/* What a step learned counts if it succeeded and its row was written. */
static inline bool
learned(const Job *job, int16 stage)
{
	return stage >= 0 && (job->verdict == JOB_DONE || job->verdict == JOB_SUPPORT);
}

/*
 * The customer and the plan the steps found.  Several steps of one
 * attribution in a batch go in separate statements, in the batch's order,
 * so a later plan merges over an earlier one as if recorded one by one.
 */
static void
record_found(Job **jobs, const int16 *stages, int njobs)
{
	static const Oid types[3] = {INT8OID, TEXTOID, TEXTOID};
	bool	   *pending = palloc(njobs * sizeof(bool));
	int			left = 0;

	for (int i = 0; i < njobs; i++)
	{
		pending[i] = learned(jobs[i], stages[i]) && (jobs[i]->found_customer || jobs[i]->plan);
		left += pending[i];
	}
	while (left > 0)
	{
		ArrayColumn cols[3];

		celloattr_columns_init(cols, types, lengthof(cols), left);
		for (int i = 0; i < njobs; i++)
		{
			if (!pending[i] || column_holds_int8(&cols[0], jobs[i]->attribution_id))
				continue;
			celloattr_column_add(&cols[0], Int64GetDatum(jobs[i]->attribution_id), false);
			celloattr_column_text(&cols[1], db_text(jobs[i]->found_customer));
			celloattr_column_text(&cols[2], db_json(jobs[i]->plan));
			pending[i] = false;
			left--;
		}
		celloattr_execute_columns(&found_plan,
				"UPDATE celloattr.attributions a"
				"   SET customer_id = coalesce(a.customer_id, f.customer),"
				"       plan = a.plan || coalesce(f.plan::jsonb, '{}')"
				"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
				"       AS f(id, customer, plan)"
				" WHERE a.id = f.id",
				cols, lengthof(cols), SPI_OK_UPDATE);
	}
}

/* The steps that follow the successful ones, one stage further. */
static void
record_follow_ups(Job **jobs, const int16 *stages, int njobs)
{
	static const Oid types[6] = {INT8OID, TEXTOID, INT2OID, TEXTOID, TEXTOID, TEXTOID};
	ArrayColumn cols[6];

	celloattr_columns_init(cols, types, lengthof(cols), njobs);
	for (int i = 0; i < njobs; i++)
	{
		ListCell   *lc;

		if (!learned(jobs[i], stages[i]))
			continue;
		foreach(lc, jobs[i]->follow_ups)
		{
			FollowUp   *f = lfirst(lc);

			celloattr_column_add(&cols[0], Int64GetDatum(jobs[i]->attribution_id), false);
			celloattr_column_text(&cols[1], f->kind);
			celloattr_column_add(&cols[2], Int16GetDatum(stages[i] + 1), false);
			celloattr_column_text(&cols[3], jobs[i]->dry_run && f->mutates ? "planned" : "queued");
			celloattr_column_text(&cols[4], db_json(f->payload));
			celloattr_column_text(&cols[5], db_text(f->key_suffix));
		}
	}
	if (cols[0].n == 0)
		return;
	celloattr_execute_columns(&follow_up_plan,
			"INSERT INTO celloattr.jobs (attribution_id, kind, stage, state, payload, idempotency_key)"
			" SELECT f.attribution_id, f.kind, f.stage, f.state, f.payload::jsonb,"
			"        'ca-' || i.install_id || '-' || f.attribution_id || '-' || f.kind"
			"        || coalesce('-' || f.suffix, '')"
			"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
			"                   pg_catalog.unnest($5), pg_catalog.unnest($6)) WITH ORDINALITY"
			"        AS f(attribution_id, kind, stage, state, payload, suffix, n)"
			"  CROSS JOIN celloattr.installation i"
			"  ORDER BY f.n"
			" ON CONFLICT (idempotency_key) DO NOTHING",
			cols, lengthof(cols), SPI_OK_INSERT);
}

/* Events for the support report (a dry run only plans them). */
static void
record_support(Job **jobs, const int16 *stages, int njobs)
{
	static const Oid types[13] = {INT8OID, INT8OID, INT8OID, TEXTOID, TIMESTAMPTZOID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	ArrayColumn cols[13];

	celloattr_columns_init(cols, types, lengthof(cols), 4);
	for (int i = 0; i < njobs; i++)
	{
		ListCell   *lc;

		if (!learned(jobs[i], stages[i]) || jobs[i]->dry_run)
			continue;
		foreach(lc, jobs[i]->support)
		{
			SupportItem *s = lfirst(lc);

			celloattr_column_add(&cols[0], Int64GetDatum(jobs[i]->attribution_id), false);
			celloattr_column_add(&cols[1], Int64GetDatum(jobs[i]->id), false);
			celloattr_column_add(&cols[2], Int64GetDatum(s->transaction_id), s->transaction_id == 0);
			celloattr_column_text(&cols[3], s->trigger);
			celloattr_column_add(&cols[4], TimestampTzGetDatum(s->event_timestamp), !s->has_timestamp);
			celloattr_column_text(&cols[5], db_text(s->price));
			celloattr_column_text(&cols[6], db_text(s->currency));
			celloattr_column_text(&cols[7], db_text(s->subscription_id));
			celloattr_column_text(&cols[8], db_text(s->invoice_id));
			celloattr_column_text(&cols[9], s->interval);
			celloattr_column_add(&cols[10], Int32GetDatum(s->seats), !s->has_seats);
			celloattr_column_text(&cols[11], db_text(s->product_key));
			celloattr_column_text(&cols[12], db_text(s->reason));
		}
	}
	if (cols[0].n == 0)
		return;
	celloattr_execute_columns(&support_plan,
			"INSERT INTO celloattr.support_items (attribution_id, job_id, transaction_id, trigger,"
			"  event_timestamp, price, currency, subscription_id, invoice_id, interval, seats,"
			"  product_key, reason)"
			" SELECT s.attribution_id, s.job_id, s.transaction_id, s.trigger, s.event_timestamp,"
			"        s.price::numeric, s.currency, s.subscription_id, s.invoice_id, s.interval,"
			"        s.seats, s.product_key, s.reason"
			"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
			"                  pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
			"                  pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12),"
			"                  pg_catalog.unnest($13))"
			"        AS s(attribution_id, job_id, transaction_id, trigger, event_timestamp, price,"
			"             currency, subscription_id, invoice_id, interval, seats, product_key,"
			"             reason)"
			" ON CONFLICT DO NOTHING",
			cols, lengthof(cols), SPI_OK_INSERT);
}

/*
 * Move attributions on (ids: their ids, locked by the caller): a stage
 * whose lower stages are all through becomes due; an attribution with
 * nothing left to do (or a failed step and nothing running) gets its final
 * state.
 */
void
record_settle(ArrayColumn *ids)
{
	celloattr_execute_columns(&promote_plan,
			"UPDATE celloattr.jobs w SET state = 'queued', next_attempt_at = pg_catalog.now()"
			" WHERE w.attribution_id = ANY ($1) AND w.state = 'waiting'"
			"   AND NOT EXISTS (SELECT 1 FROM celloattr.jobs p"
			"                    WHERE p.attribution_id = w.attribution_id AND p.stage < w.stage"
			"                      AND p.state NOT IN ('done', 'support', 'planned'))",
			ids, 1, SPI_OK_UPDATE);

	celloattr_execute_columns(&settle_plan,
			"WITH s AS ("
			"  SELECT attribution_id AS id,"
			"         pg_catalog.count(*) FILTER (WHERE state IN ('queued', 'running')) AS active,"
			"         pg_catalog.count(*) FILTER (WHERE state = 'waiting') AS waiting,"
			"         pg_catalog.count(*) FILTER (WHERE state = 'failed') AS failed,"
			"         (pg_catalog.array_agg(last_error ORDER BY finished_at DESC)"
			"            FILTER (WHERE state = 'failed'))[1] AS error"
			"    FROM celloattr.jobs WHERE attribution_id = ANY ($1)"
			"   GROUP BY attribution_id)"
			"UPDATE celloattr.attributions a"
			"   SET state = CASE WHEN s.failed > 0 THEN 'failed'"
			"                    WHEN a.dry_run THEN 'planned'"
			"                    WHEN EXISTS (SELECT 1 FROM celloattr.support_items i"
			"                                  WHERE i.attribution_id = a.id) THEN 'needs_support'"
			"                    ELSE 'done' END,"
			"       finished_at = pg_catalog.now(), last_error = s.error"
			"  FROM s"
			" WHERE a.id = s.id AND a.state IN ('queued', 'running')"
			"   AND s.active = 0 AND (s.waiting = 0 OR s.failed > 0)",
			ids, 1, SPI_OK_UPDATE);
}

/* The attributions of the recorded steps move on. */
static void
move_attributions_on(Job **jobs, const int16 *stages, int njobs)
{
	ArrayColumn ids;

	celloattr_columns_init(&ids, (Oid[]) {INT8OID}, 1, njobs);
	for (int i = 0; i < njobs; i++)
		if (stages[i] >= 0 && !column_holds_int8(&ids, jobs[i]->attribution_id))
			celloattr_column_add(&ids, Int64GetDatum(jobs[i]->attribution_id), false);
	if (ids.n > 0)
		record_settle(&ids);
}

/*
 * Write the outcomes of the jobs (with their requests in the log, unless
 * with_log is false) in the current transaction, whose caller holds the
 * rows of the steps and their attributions (outcomes.c).  False if a job
 * is not replay-safe: then the transaction must commit synchronously.
 */
bool
record_batch(List *jobs, bool with_log)
{
	int			njobs = list_length(jobs);
	Job		  **job_at;
	Outcome    *outcomes;
	int16	   *stages;
	bool		replay_safe = true;
	ListCell   *lc;

	if (njobs == 0)
		return true;
	job_at = palloc(njobs * sizeof(Job *));
	outcomes = palloc(njobs * sizeof(Outcome));
	stages = palloc(njobs * sizeof(int16));
	foreach(lc, jobs)
	{
		Job		   *job = lfirst(lc);
		int			i = foreach_current_index(lc);

		if (job->ops == NULL || !job->ops->replay_safe)
			replay_safe = false;
		job_at[i] = job;
		outcomes[i] = outcome_of(job);
	}

	if (with_log)
		log_requests(jobs);
	finish_steps(job_at, outcomes, njobs, stages);
	/* after the verdicts: a step that waits for the listing is queued to be woken */
	index_record(job_at, njobs);
	record_found(job_at, stages, njobs);
	record_follow_ups(job_at, stages, njobs);
	record_support(job_at, stages, njobs);
	move_attributions_on(job_at, stages, njobs);
	return replay_safe;
}
