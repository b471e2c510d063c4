/*-------------------------------------------------------------------------
 *
 * pace.c
 *	  The worker's pacing: a token bucket per provider, filled at its rate
 *	  setting, and one per endpoint that has a limit of its own.
 *
 * A request waits for a token of its provider's bucket, and of its
 * endpoint's (Stripe's search allows 20 reads a second whatever the
 * account's limit) before it goes out, so a backlog never exceeds either
 * rate.  Buckets hold a tenth of a second's worth at most: bursts stay
 * short.  A 429 closes its provider's bucket until its Retry-After has
 * passed.  A rate of 0 turns a provider's pacing off (the endpoint limits
 * stay: they are the provider's, not a setting).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "celloattr.h"
#include "providers.h"
#include "worker.h"

typedef struct Pace
{
	const char *name;			/* a provider, or an endpoint's limit */
	double	   *limit;			/* the setting, or the endpoint's rate */
	bool		per_minute;
	double		tokens;
	TimestampTz refilled_at;
	TimestampTz closed_until;	/* after a 429 */
} Pace;

static double stripe_search_rate = STRIPE_SEARCH_RATE;

static Pace paces[] = {
	{"stripe", &celloattr_stripe_rate_limit, false, 0, 0, 0},
	{"chargebee", &celloattr_chargebee_rate_limit, true, 0, 0, 0},
	{"cello", &celloattr_cello_rate_limit, false, 0, 0, 0},
	{STRIPE_SEARCH_PACE, &stripe_search_rate, false, 0, 0, 0},
};

static Pace *
pace_of(const char *name)
{
	if (name == NULL)
		return NULL;
	for (size_t i = 0; i < lengthof(paces); i++)
		if (strcmp(paces[i].name, name) == 0)
			return &paces[i];
	return NULL;
}

static double
rate_per_second(Pace *p)
{
	return p->per_minute ? *p->limit / 60.0 : *p->limit;
}

/* Ms until the bucket has a token (0: it has one now), refilled up to now. */
static long
pace_wait(Pace *p, TimestampTz now)
{
	double		rate = rate_per_second(p);
	double		burst;

	if (now < p->closed_until)
		return (long) ((p->closed_until - now) / 1000) + 1;
	if (rate <= 0)
		return 0;				/* pacing off */
	burst = Max(1.0, rate / 10.0);
	if (p->refilled_at == 0)
		p->tokens = burst;
	else
		p->tokens = Min(burst, p->tokens + rate * (now - p->refilled_at) / 1e6);
	p->refilled_at = now;
	if (p->tokens >= 1.0)
		return 0;
	return (long) ((1.0 - p->tokens) / rate * 1000.0) + 1;
}

static void
pace_spend(Pace *p)
{
	if (p && rate_per_second(p) > 0)
		p->tokens -= 1.0;
}

bool
pace_take(const HttpExchange *ex, TimestampTz now, long *wait_ms)
{
	Pace	   *p = pace_of(ex->provider);
	Pace	   *also = pace_of(ex->pace_also);
	long		wait = p ? pace_wait(p, now) : 0;

	if (also)
		wait = Max(wait, pace_wait(also, now));
	if (wait > 0)
	{
		*wait_ms = wait;
		return false;
	}
	pace_spend(p);
	pace_spend(also);
	return true;
}

void
pace_close(const char *provider, TimestampTz until)
{
	Pace	   *p = pace_of(provider);

	/* never shortened: a step that snoozes for its own reasons (a page of
	 * the event index read, due again at once) must not reopen a bucket a
	 * 429 closed */
	if (p && until > p->closed_until)
		p->closed_until = until;
}

TimestampTz
pace_closed_until(const char *provider)
{
	Pace	   *p = pace_of(provider);

	return p ? p->closed_until : 0;
}
