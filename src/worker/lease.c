/*-------------------------------------------------------------------------
 *
 * lease.c
 *	  A step's lease: how long it may stay running (celloattr.lease, at
 *	  least a request's timeout), and the verdict of a step still running
 *	  when its lease ends.  worker.c keeps the leases of its steps in
 *	  flight and ends those that run out.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "celloattr.h"
#include "http.h"
#include "stats.h"
#include "worker.h"

/*
 * The lease a claim gives its steps: celloattr.lease, but never shorter
 * than one request may take (a second more, so that curl's own timeout,
 * with its clearer message, comes first).
 */
int
worker_lease_seconds(void)
{
	static int	warned_lease = -1;
	static int	warned_timeout = -1;
	int			floor_s = (celloattr_request_timeout + 999) / 1000 + 1;

	if (celloattr_lease >= floor_s)
		return celloattr_lease;
	if (warned_lease != celloattr_lease || warned_timeout != celloattr_request_timeout)
	{
		ereport(WARNING,
				(errmsg("celloattr.lease (%d s) is shorter than celloattr.request_timeout (%d ms): steps get a lease of %d s",
						celloattr_lease, celloattr_request_timeout, floor_s),
				 errhint("Set celloattr.lease to at least request_timeout plus a second.")));
		warned_lease = celloattr_lease;
		warned_timeout = celloattr_request_timeout;
	}
	return floor_s;
}

/*
 * A step whose lease ended: a request in flight is cancelled and the step
 * retried after backoff (an attempt used: the provider was asked).  One
 * waiting for its provider's pace goes back to the queue until the
 * provider is open again, no attempt used, if it has sent nothing yet;
 * one that did send requests uses an attempt too, as it starts over from
 * its first request when claimed again: else a step that needs more
 * requests than its provider's pace allows in a lease (a Chargebee site's
 * pages of events) would start over for ever, never done nor failed, and
 * take the provider's whole rate from every other step.
 */
void
lease_expire(Job *job, HttpEngine *engine, TimestampTz now)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);
	HttpExchange *ex = job->pending;
	char	   *reason = psprintf("abandoned when the step's lease of %d s ran out",
								  worker_lease_seconds());

	if (ex != NULL)
	{
		TimestampTz closed_until = pace_closed_until(ex->provider);

		job->pending = NULL;
		ex->error = psprintf("not sent: %s", reason);
		if (list_length(job->exchanges) > 1)
			job_retry(job, "%s %s %s, after %d requests paced at celloattr.%s_rate_limit (a longer celloattr.lease lets it finish)",
					  ex->method, ex->url, ex->error, list_length(job->exchanges) - 1,
					  ex->provider);
		else
		{
			job->verdict = JOB_SNOOZE;
			job->snooze_seconds = closed_until > now ? (closed_until - now) / 1e6 : 0;
			job->error = psprintf("%s %s %s", ex->method, ex->url, ex->error);
		}
	}
	else if (job->exchanges != NIL)
	{
		/* not waiting for pace: its latest request is in flight */
		ex = llast(job->exchanges);
		http_engine_cancel(engine, ex, reason);
		stats_answered(ex, job->kind);
		if (!job_unsure_if_sent(job, ex))
			job_retry(job, "%s %s: %s", ex->method, ex->url, reason);
	}
	else
		job_retry(job, "%s", reason);
	MemoryContextSwitchTo(old);
}
