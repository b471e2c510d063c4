/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The worker: claims due steps, runs them over HTTP with no transaction
 *	  open, paces each provider, and records every outcome.
 *
 * One loop, one wait: the HTTP engine waits for curl's sockets and timers
 * and for the latch together, so a commit that queues work (which sets the
 * latch), a SIGHUP or a SIGTERM is seen at once, also while transfers are
 * in flight.  Idle, the worker sleeps until the next retry falls due or
 * celloattr.poll_interval passes, whichever is first.
 *
 * Requests wait for a token of their provider account's bucket before they
 * go out (pace.c, shared with the workers of other databases that use the
 * same account), so a backlog never exceeds the configured rate; a 429
 * also closes the account's bucket until its Retry-After has passed.
 *
 * Every deadline is kept as a point in time and checked on each round,
 * whatever woke the worker: a steady stream of commits setting the latch
 * must not postpone curl's timeouts (http.c), a pacing token, a retry that
 * falls due or the end of a step's lease.  A step that is still running
 * when its lease ends (celloattr.lease, at least a request's timeout) is
 * aborted (lease.c): its transfer is cancelled and it is retried after
 * backoff.  What the loop does is kept in shared memory for the
 * celloattr.worker_status view (stats.c).
 *
 * When no due step is left to claim, the worker deletes rows older than
 * celloattr.retention (retention.c): a batch per table, again and again
 * (with a rest as long as each round) while full batches come back, then
 * again after poll_interval.
 *
 * The worker is a guest in the database: it never exits on an ERROR (each
 * of its transactions, and each step's code, catches its own, and the
 * main loop catches the rest), never waits for a lock an application
 * holds (queue.c, outcomes.c), runs with settings no database owner can
 * change (session.c), and on SIGTERM lets its transfers in flight finish
 * for a few seconds and records them before it leaves.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "http.h"
#include "record.h"
#include "stats.h"
#include "worker.h"

/* Seconds a step waits after a local shortage (descriptors, memory)... */
#define RESOURCE_SNOOZE_SECONDS 2.0
/* ...unless transfers in flight will free one: then it waits in memory. */
#define SHORTAGE_RETRY_MS 20

/* Ms before outcomes are written again when the queue's tables or rows
 * were held by someone. */
#define RECORD_RETRY_MS 100

/* Ms between tries to requeue orphans that someone held locked. */
#define ORPHAN_RETRY_MS 1000

/* The longest a stopping worker waits for its transfers in flight. */
#define STOP_GRACE_MS 5000

static HttpEngine *engine = NULL;
static MemoryContext jobs_cxt = NULL;
static dlist_head waiting_for_pace = DLIST_STATIC_INIT(waiting_for_pace);
static dlist_head running_jobs = DLIST_STATIC_INIT(running_jobs);
static List *finished = NIL;
static int	running = 0;		/* claimed steps not finished: each holds a
								 * transfer (in flight or waiting for pace) */

/* The list of finished steps outlives every job's and loop's memory. */
static void
finish(Job *job)
{
	MemoryContext old = MemoryContextSwitchTo(jobs_cxt);

	finished = lappend(finished, job);
	MemoryContextSwitchTo(old);
	dlist_delete(&job->running_node);
	running--;
}

/*
 * Send the job's pending request now; false (and *wait_ms) if its
 * provider's pace says wait, or no descriptor is free until a transfer in
 * flight ends.
 */
static bool
try_send(Job *job, TimestampTz now, long *wait_ms)
{
	HttpExchange *ex = job->pending;

	if (!pace_take(ex, now, wait_ms))
		return false;
	job->pending = NULL;
	if (!celloattr_allow_http && pg_strncasecmp(ex->url, "http://", 7) == 0)
	{
		job_fail(job, "refusing plain http:// for %s: set an https:// URL (celloattr.allow_http is off)",
				 ex->provider);
		finish(job);
	}
	else if (!http_engine_add(engine, ex))
	{
		if (ex->resource_error && http_engine_in_flight(engine) > 0)
		{
			/* a transfer in flight gives its descriptor back soon: wait here */
			ex->error = NULL;
			ex->resource_error = false;
			job->pending = ex;
			*wait_ms = SHORTAGE_RETRY_MS;
			return false;
		}
		job->verdict = JOB_SNOOZE;
		job->snooze_seconds = RESOURCE_SNOOZE_SECONDS;
		job->error = psprintf("not sent: %s", ex->error);
		finish(job);
	}
	else
		stats_sent(ex->provider);
	return true;
}

/* After a step moved: send its next request, or keep its verdict. */
static void
advance(Job *job)
{
	long		wait_ms;

	if (job->verdict != JOB_RUNNING)
		finish(job);
	else if (job->pending == NULL)
	{
		job_fail(job, "step %s neither sent a request nor settled", job->kind);
		finish(job);
	}
	else if (!try_send(job, GetCurrentTimestamp(), &wait_ms))
		dlist_push_tail(&waiting_for_pace, &job->node);
}

/*
 * Run a step's own code: start() (ex NULL) or on_response().  An ERROR in
 * it (a bug, or memory) fails the step with the error, logged, instead of
 * ending the worker.
 */
static void
run_step_code(Job *job, HttpExchange *ex)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		if (ex)
			job->ops->on_response(job, ex);
		else
			job->ops->start(job);
	}
	PG_CATCH();
	{
		ErrorData  *error = queue_recover(cxt);

		job->pending = NULL;
		job_fail(job, "step %s raised an error: %s", job->kind, error->message);
		FreeErrorData(error);
	}
	PG_END_TRY();
}

/*
 * A claimed step starts running: its code runs and sends its first request.
 * Not when the worker is stopping (send false, see worker_round): then a
 * step goes back to the queue unsent, no attempt used.  One the claim
 * settled (out of attempts) keeps its verdict: nothing is sent either way.
 */
static void
start_job(Job *job, TimestampTz lease_ends, bool send)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	running++;
	job->lease_ends = lease_ends;
	dlist_push_tail(&running_jobs, &job->running_node);
	if (job->ops == NULL)
		job_fail(job, "unknown step kind \"%s\"", job->kind);
	else if (job->verdict == JOB_RUNNING && !send)
	{
		job->verdict = JOB_SNOOZE;
		job->snooze_seconds = 0;
		job->error = pstrdup("not sent: the worker was stopping");
	}
	else if (job->verdict == JOB_RUNNING)
		run_step_code(job, NULL);
	advance(job);
	MemoryContextSwitchTo(old);
}

static void
exchange_done(HttpExchange *ex)
{
	Job		   *job = (Job *) ex->owner;
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	stats_answered(ex, job->kind);
	if (ex->resource_error)
	{
		/* our shortage, not the provider's answer: no attempt is used */
		job->verdict = JOB_SNOOZE;
		job->snooze_seconds = RESOURCE_SNOOZE_SECONDS;
		job->error = psprintf("%s %s not completed for lack of local resources: %s",
							  ex->method, ex->url, ex->error);
	}
	else
	{
		run_step_code(job, ex);
		/* only the provider's 429: the bucket is shared with other
		 * databases, which a step's own wait (a Cello token another step
		 * is getting) must not hold */
		if (job->verdict == JOB_SNOOZE && ex->status == 429)
			pace_close(ex->provider, GetCurrentTimestamp() +
					   (TimestampTz) (job->snooze_seconds * 1e6));
	}
	advance(job);
	MemoryContextSwitchTo(old);
}

/* End the steps whose lease is over; returns ms until the next one ends (or -1). */
static long
enforce_leases(void)
{
	dlist_mutable_iter iter;
	TimestampTz now = GetCurrentTimestamp();
	long		next = -1;

	dlist_foreach_modify(iter, &running_jobs)
	{
		Job		   *job = dlist_container(Job, running_node, iter.cur);

		if (now >= job->lease_ends)
		{
			/* waiting for pace: out of that list; in flight: cancelled */
			if (job->pending != NULL)
				dlist_delete(&job->node);
			lease_expire(job, engine, now);
			finish(job);
		}
		else
		{
			long		ms = TimestampDifferenceMilliseconds(now, job->lease_ends);

			if (next < 0 || ms < next)
				next = ms;
		}
	}
	return next;
}

/* Send what the paces allow; returns ms until the next token (or -1). */
static long
release_paced(void)
{
	dlist_mutable_iter iter;
	TimestampTz now = GetCurrentTimestamp();
	long		next = -1;

	dlist_foreach_modify(iter, &waiting_for_pace)
	{
		Job		   *job = dlist_container(Job, node, iter.cur);
		long		wait_ms = 0;

		if (try_send(job, now, &wait_ms))
			dlist_delete(iter.cur);
		else if (next < 0 || wait_ms < next)
			next = wait_ms;
	}
	return next;
}

/*
 * Record finished steps; true if something new may be due.  Outcomes that
 * could not be recorded yet (the tables or their rows held by someone)
 * stay in the list for the next try: they are never dropped, so a step
 * that was sent is never sent again for want of its outcome.
 */
static bool
record_finished(void)
{
	List	   *left;
	ListCell   *lc;
	MemoryContext old;

	if (finished == NIL)
		return false;
	left = record_outcomes(finished);
	if (left == finished)
	{
		/*
		 * Nothing written: busy tables, or objects of a version the library
		 * does not know (written once they match), unless they are gone.
		 */
		if (!queue_extension_absent())
			return false;
		left = NIL;
	}
	stats_recorded(list_length(finished) - list_length(left));
	foreach(lc, finished)
		if (!list_member_ptr(left, lfirst(lc)))
			MemoryContextDelete(((Job *) lfirst(lc))->cxt);
	list_free(finished);
	old = MemoryContextSwitchTo(jobs_cxt);
	finished = list_copy(left);
	MemoryContextSwitchTo(old);
	if (celloattr_shared)
		ConditionVariableBroadcast(&celloattr_shared->progress);
	/* a follow-up, a promotion or a rescheduled retry: look again */
	return true;
}

/*
 * SIGTERM: steps waiting for a pacing token (or a descriptor) were never
 * sent; they go back to the queue now, without using an attempt, so that
 * only the transfers really in flight are left to finish.
 */
static void
unsend_waiting(void)
{
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &waiting_for_pace)
	{
		Job		   *job = dlist_container(Job, node, iter.cur);

		dlist_delete(iter.cur);
		job->pending = NULL;
		job->verdict = JOB_SNOOZE;
		job->snooze_seconds = 0;
		job->error = MemoryContextStrdup(job->cxt, "not sent: the worker was stopping");
		finish(job);
	}
}

/* Hand queue.c the ids of the steps this worker holds, to find the others. */
static void
adopt_expired(void)
{
	int64	   *held = palloc((running + list_length(finished) + 1) * sizeof(int64));
	int			n = 0;
	dlist_iter	iter;
	ListCell   *lc;

	dlist_foreach(iter, &running_jobs)
		held[n++] = dlist_container(Job, running_node, iter.cur)->id;
	foreach(lc, finished)
		held[n++] = ((Job *) lfirst(lc))->id;
	queue_adopt_expired(held, n);
	pfree(held);
}

/* What one round of the loop decides for the next; static, as it must
 * survive an error caught by the worker's main loop. */
static struct
{
	bool		claim_now;
	bool		orphans_requeued;
	bool		prune_more;
	TimestampTz next_claim_at;
	TimestampTz next_prune_at;
	TimestampTz next_record_at;
	TimestampTz next_orphans_at;
	TimestampTz next_expiry_at; /* the next look for steps past their lease */
	TimestampTz stop_at;		/* SIGTERM: the end of the grace period */
} loop = {true, false, false, 0, 0, 0, 0, 0, 0};

/*
 * One round of the worker's loop; false when the worker must leave.
 *
 * On SIGTERM the worker claims nothing more and gives the transfers in
 * flight a grace period of min(request_timeout, STOP_GRACE_MS) to finish,
 * records their outcomes, then leaves.  A Cello event or a Chargebee
 * redelivery (no idempotency key) answered meanwhile is recorded, not sent
 * again by the next worker.  Postmaster's smart and fast shutdowns both
 * send SIGTERM and wait for the worker.
 */
static bool
worker_round(MemoryContext loop_cxt)
{
	long		timeout_ms = celloattr_poll_interval;
	long		pace_ms;
	long		lease_ms;
	bool		may_prune;
	TimestampTz now;

	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		worker_reload();
	}
	if (!worker_may_stay())
		return false;
	MemoryContextReset(loop_cxt);
	MemoryContextSwitchTo(loop_cxt);
	now = GetCurrentTimestamp();

	if (ShutdownRequestPending && loop.stop_at == 0)
	{
		loop.stop_at = now + (TimestampTz) Min(celloattr_request_timeout, STOP_GRACE_MS) * 1000;
		unsend_waiting();
		ereport(LOG,
				(errmsg("celloattr worker stopping: waiting up to %d ms for %d request(s) in flight",
						Min(celloattr_request_timeout, STOP_GRACE_MS), running)));
	}
	if (loop.stop_at != 0 && ((running == 0 && finished == NIL) || now >= loop.stop_at))
		return false;

	/* steps past their lease that nobody holds become orphans (orphans.c) */
	if (loop.stop_at == 0 && loop.orphans_requeued && now >= loop.next_expiry_at)
	{
		adopt_expired();
		/* a lease is whole seconds long: looking more often finds nothing more */
		loop.next_expiry_at = now + (TimestampTz) Max(celloattr_poll_interval, 1000) * 1000;
		if (queue_orphans_left() > 0)
			loop.next_orphans_at = now;
	}

	/* until the first requeue, nothing is claimed: an orphan must not wait behind new work */
	if (loop.stop_at == 0 &&
		(!loop.orphans_requeued || (queue_orphans_left() > 0 && now >= loop.next_orphans_at)) &&
		queue_extension_ready(false))
	{
		if (queue_requeue_orphans())
		{
			loop.orphans_requeued = true;
			loop.claim_now = true;
		}
		/* orphans someone holds: again in a while */
		loop.next_orphans_at = now + (TimestampTz) ORPHAN_RETRY_MS * 1000;
	}

	/*
	 * Claim before recording: the transfer slots of steps that just
	 * finished go to new steps at once, and their outcomes are written
	 * while the new requests are out.
	 */
	if (now >= loop.next_claim_at)
		loop.claim_now = true;
	if (loop.stop_at != 0)
	{
		loop.claim_now = false;
		loop.next_claim_at = loop.stop_at;
	}
	else if (loop.claim_now && loop.orphans_requeued && !celloattr_paused &&
			 celloattr_secrets_ready() && running < celloattr_max_in_flight)
	{
		double		next_due;
		int			room = celloattr_max_in_flight - running;
		List	   *jobs = queue_claim(room, jobs_cxt, &next_due);
		ListCell   *lc;

		/* now is before the claim's now(): a lease ends no later than its lease_until */
		TimestampTz lease_ends = now + (TimestampTz) worker_lease_seconds() * USECS_PER_SEC;

		stats_claimed(list_length(jobs));

		/*
		 * A SIGTERM during the claim may have cut short its commit's wait
		 * for a synchronous standby (worker_sigterm): the standby may not
		 * know these steps are claimed, and, promoted, would send them as
		 * new; so they are not sent now but go back to the queue.
		 */
		foreach(lc, jobs)
			start_job((Job *) lfirst(lc), lease_ends, !ShutdownRequestPending);
		/* a full claim may have left more behind */
		loop.claim_now = list_length(jobs) == room;
		loop.next_claim_at = now + (TimestampTz) celloattr_poll_interval * 1000;
		if (next_due >= 0)
			loop.next_claim_at = Min(loop.next_claim_at, now + (TimestampTz) (next_due * 1e6));
		list_free(jobs);
	}
	else if (!loop.orphans_requeued || celloattr_paused || !celloattr_secrets_ready())
	{
		/* nothing may be claimed: sleep until woken or poll_interval */
		loop.claim_now = false;
		loop.next_claim_at = now + (TimestampTz) celloattr_poll_interval * 1000;
	}

	/*
	 * Old rows wait while due steps do.  While many are left, the worker
	 * rests after each round as long as the round took, so that deleting
	 * them takes at most half its time (half a core).
	 */
	may_prune = loop.orphans_requeued && !loop.claim_now && loop.stop_at == 0;
	if (may_prune && now >= loop.next_prune_at)
	{
		TimestampTz started = GetCurrentTimestamp();
		TimestampTz ended;

		loop.prune_more = retention_prune();
		ended = GetCurrentTimestamp();
		loop.next_prune_at = loop.prune_more ? ended + (ended - started) :
			now + (TimestampTz) celloattr_poll_interval * 1000;
	}

	lease_ms = enforce_leases();
	pace_ms = release_paced();
	http_engine_send_added(engine);

	if (finished != NIL && now >= loop.next_record_at)
	{
		if (record_finished())
			loop.claim_now = true;
		/* not all written (a TRUNCATE, or an application holding rows): soon, not in a spin */
		if (finished != NIL)
			loop.next_record_at = GetCurrentTimestamp() + (TimestampTz) RECORD_RETRY_MS * 1000;
	}

	if (loop.claim_now && running < celloattr_max_in_flight)
		timeout_ms = 0;
	else
	{
		TimestampTz wake_at = loop.next_claim_at;
		long		until_wake;

		if (loop.prune_more && may_prune)
			wake_at = Min(wake_at, loop.next_prune_at);
		if (finished != NIL)
			wake_at = Min(wake_at, loop.next_record_at);
		if (queue_orphans_left() > 0)
			wake_at = Min(wake_at, loop.next_orphans_at);
		until_wake = (long) ((wake_at - GetCurrentTimestamp()) / 1000);
		timeout_ms = Max(0, Min(timeout_ms, until_wake));
		if (pace_ms >= 0)
			timeout_ms = Min(timeout_ms, pace_ms);
		if (lease_ms >= 0)
			timeout_ms = Min(timeout_ms, lease_ms);
	}

	/* what the loop is doing, for celloattr.worker_status */
	stats_loop(loop.stop_at != 0 ? WORKER_STOPPING :
			   !loop.orphans_requeued ? WORKER_STARTING :
			   celloattr_paused ? WORKER_PAUSED :
			   !celloattr_secrets_ready() ? WORKER_NO_SECRETS :
			   running > 0 || finished != NIL ? WORKER_WORKING : WORKER_IDLE,
			   running, http_engine_in_flight(engine));
	pgstat_report_activity(STATE_IDLE, NULL);
	if (http_engine_wait(engine, timeout_ms))
		loop.claim_now = true;
	return true;
}

void
celloattr_worker_main(Datum main_arg)
{
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext loop_cxt;
	char	   *database;

	database = worker_arrive(DatumGetObjectId(main_arg));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "celloattr worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	jobs_cxt = AllocSetContextCreate(TopMemoryContext, "celloattr jobs",
									 ALLOCSET_DEFAULT_SIZES);
	engine = http_engine_create(exchange_done);
	/*
	 * Losing the last outcomes in a crash only makes their steps run again
	 * with the same idempotency keys: no need to wait for each flush.
	 * Steps that are not replay-safe commit synchronously (outcomes.c).
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	celloattr_secrets_load();
	pace_accounts_changed();
	elog(LOG, "celloattr worker started in database \"%s\"", database);

	/*
	 * The last line of defence, as in autovacuum: an ERROR that no
	 * transaction of the worker caught (queue.c, outcomes.c, retention.c
	 * and the steps' code catch their own) is logged and cleaned up, and
	 * the loop goes on after a second's rest, instead of the worker
	 * exiting and a new one sending the steps it had in flight again.
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		celloattr_recover_from_error();
	PG_exception_stack = &local_sigjmp_buf;

	while (worker_round(loop_cxt))
		;

	/* leave nothing half-recorded: finished steps are written, the rest
	 * stay 'running' and are claimed again (same keys) by the next worker */
	if (finished != NIL)
		record_finished();
	elog(LOG, "celloattr worker stopping with %d step(s) in flight", running);
	proc_exit(0);
}
