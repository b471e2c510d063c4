/*-------------------------------------------------------------------------
 *
 * pace.c
 *	  Pacing per provider account: token buckets in shared memory, one per
 *	  account of a provider (filled at the rate setting of the worker that
 *	  takes from it) and one per account's endpoint that has a limit of its
 *	  own.
 *
 * A request waits for a token of its provider's bucket, and of its
 * endpoint's (Stripe's search allows 20 reads a second whatever the
 * account's limit) before it goes out, so a backlog never exceeds either
 * rate.  Buckets hold a tenth of a second's worth at most: bursts stay
 * short.  A 429 closes its provider's bucket until its Retry-After has
 * passed.  A rate of 0 turns a provider's pacing off (the endpoint limits
 * stay: they are the provider's, not a setting).
 *
 * Providers limit an account, not a database: the workers of databases
 * that use the same account take from the same bucket, and a 429 one of
 * them gets holds them all.  An account is what a request's budget is
 * counted by: the bucket's name, the base URL its requests go to and the
 * credential that names the account there (account_identity()).  Shared
 * memory holds only a SHA-256 digest of that, never a key; the worker
 * computes its digests when it reads its settings and secrets, not per
 * request.
 *
 * The bucket refills at the rate of whichever worker takes from it, so
 * databases that share an account should set the same rate; one whose
 * rate is 0 takes without counting, and is held by a 429 all the same.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "common/sha2.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "providers.h"
#include "worker.h"

#define ACCOUNT_LEN PG_SHA256_DIGEST_LENGTH

typedef struct PaceBucket
{
	uint8		account[ACCOUNT_LEN];	/* digest of account_identity() */
	bool		in_use;
	double		tokens;
	TimestampTz refilled_at;	/* 0: not taken from yet (full) */
	TimestampTz closed_until;	/* after a 429 */
	TimestampTz used_at;		/* last taken from or closed: for reuse */
} PaceBucket;

/*
 * One spinlock for the table: each operation is a lookup (the bucket's
 * place is remembered by the worker, so a scan is rare) and a few
 * arithmetic steps, a request's worth of work at most.
 */
typedef struct PaceTable
{
	slock_t		mutex;
	int			nbuckets;
	PaceBucket	buckets[FLEXIBLE_ARRAY_MEMBER];
} PaceTable;

static PaceTable *table = NULL;

/* A bucket this worker paces by, and the account it is for. */
typedef struct Pace
{
	const char *name;			/* a provider, or an endpoint's limit */
	double	   *limit;			/* the setting, or the endpoint's rate */
	bool		per_minute;
	uint8		account[ACCOUNT_LEN];
	int			slot;			/* where the bucket was last found: a hint */
} Pace;

static double stripe_search_rate = STRIPE_SEARCH_RATE;

static Pace paces[] = {
	{.name = "stripe", .limit = &celloattr_stripe_rate_limit},
	{.name = "chargebee", .limit = &celloattr_chargebee_rate_limit, .per_minute = true},
	{.name = "cello", .limit = &celloattr_cello_rate_limit},
	{.name = STRIPE_SEARCH_PACE, .limit = &stripe_search_rate},
};

#define PACE_KINDS lengthof(paces)

/*
 * Accounts the table holds at once: room for every bucket of each worker
 * (celloattr.max_workers), twice over, for accounts just replaced by a
 * reload; a new account beyond that takes the least recently used bucket.
 */
#define PACE_BUCKETS (2 * PACE_KINDS * celloattr_max_workers)

/* pace_accounts_changed() has run: the digests are this worker's. */
static bool accounts_known = false;

Size
pace_shmem_size(void)
{
	return add_size(offsetof(PaceTable, buckets),
					mul_size(PACE_BUCKETS, sizeof(PaceBucket)));
}

/* Called with AddinShmemInitLock held. */
void
pace_shmem_init(void)
{
	bool		found;

	table = ShmemInitStruct("celloattr pace", pace_shmem_size(), &found);
	if (!found)
	{
		memset(table, 0, pace_shmem_size());
		table->nbuckets = PACE_BUCKETS;
		SpinLockInit(&table->mutex);
	}
}

/*
 * The account a bucket counts requests against, as NUL-separated parts:
 * its name, the base URL its requests go to, and the credential that
 * names the account there.  Chargebee's redeliveries go to Cello's webhook
 * and are paced as Cello's (chargebee.c): they count against the Cello
 * account, named by its access key id; only a database without one names
 * it by the webhook's URL and basic-auth user (two databases of one Cello
 * account that name it differently pace apart).
 */
static void
account_identity(const Pace *p, const char **parts)
{
	parts[0] = p->name;
	if (strcmp(p->name, "chargebee") == 0)
	{
		char	   *base = chargebee_api_base();

		parts[1] = base ? base : "";
		parts[2] = celloattr_chargebee_api_key;
	}
	else if (strcmp(p->name, "cello") == 0 && celloattr_cello_access_key_id[0] == '\0')
	{
		parts[1] = base_url(celloattr_chargebee_webhook_url);
		parts[2] = celloattr_chargebee_webhook_username;
	}
	else if (strcmp(p->name, "cello") == 0)
	{
		parts[1] = base_url(celloattr_cello_api_url);
		parts[2] = celloattr_cello_access_key_id;
	}
	else
	{
		/* Stripe's, and its search's: the account of the secret key */
		parts[1] = base_url(celloattr_stripe_api_url);
		parts[2] = celloattr_stripe_secret_key;
	}
}

/* SHA-256 of the parts, each with its terminating NUL. */
static void
digest_parts(const char *const *parts, int nparts, uint8 *digest)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	bool		ok = ctx != NULL && pg_cryptohash_init(ctx) == 0;

	for (int i = 0; ok && i < nparts; i++)
		ok = pg_cryptohash_update(ctx, (const uint8 *) parts[i],
								  strlen(parts[i]) + 1) == 0;
	if (ok)
		ok = pg_cryptohash_final(ctx, digest, ACCOUNT_LEN) == 0;
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not compute the digest of a celloattr pacing account: %s",
						ctx ? pg_cryptohash_error(ctx) : "out of memory")));
	pg_cryptohash_free(ctx);
}

void
pace_accounts_changed(void)
{
	uint8		digests[PACE_KINDS][ACCOUNT_LEN];
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "celloattr pace accounts",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	ResourceOwner owner = CurrentResourceOwner;

	/*
	 * With OpenSSL a hash context belongs to a resource owner, and the
	 * worker has none between its transactions.  The digests are all made
	 * before any is used: a failure keeps the accounts of before.
	 */
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "celloattr pace accounts");
	for (size_t i = 0; i < PACE_KINDS; i++)
	{
		const char *parts[3];

		account_identity(&paces[i], parts);
		digest_parts(parts, lengthof(parts), digests[i]);
	}
	ResourceOwnerRelease(CurrentResourceOwner, RESOURCE_RELEASE_BEFORE_LOCKS, true, true);
	ResourceOwnerRelease(CurrentResourceOwner, RESOURCE_RELEASE_LOCKS, true, true);
	ResourceOwnerRelease(CurrentResourceOwner, RESOURCE_RELEASE_AFTER_LOCKS, true, true);
	ResourceOwnerDelete(CurrentResourceOwner);
	CurrentResourceOwner = owner;
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);

	for (size_t i = 0; i < PACE_KINDS; i++)
		memcpy(paces[i].account, digests[i], ACCOUNT_LEN);
	accounts_known = true;
}

static Pace *
pace_of(const char *name)
{
	if (name == NULL)
		return NULL;
	for (size_t i = 0; i < PACE_KINDS; i++)
		if (strcmp(paces[i].name, name) == 0)
			return &paces[i];
	return NULL;
}

/* The account's bucket, or NULL when the table holds none; mutex held. */
static PaceBucket *
find_bucket(Pace *p)
{
	PaceBucket *b = &table->buckets[p->slot];

	Assert(accounts_known);
	if (b->in_use && memcmp(b->account, p->account, ACCOUNT_LEN) == 0)
		return b;
	for (int i = 0; i < table->nbuckets; i++)
	{
		b = &table->buckets[i];
		if (b->in_use && memcmp(b->account, p->account, ACCOUNT_LEN) == 0)
		{
			p->slot = i;
			return b;
		}
	}
	return NULL;
}

/* Whether bucket a is a better one to reuse than b: unused first, then
 * one no 429 holds, then the least recently used. */
static bool
better_to_reuse(const PaceBucket *a, const PaceBucket *b, TimestampTz now)
{
	bool		a_held = a->closed_until > now;
	bool		b_held = b->closed_until > now;

	if (a->in_use != b->in_use)
		return !a->in_use;
	if (a_held != b_held)
		return !a_held;
	return a->used_at < b->used_at;
}

/*
 * The account's bucket, a new one (full, open) if the table held none;
 * mutex held.  Reusing the least recently used bucket is harmless: idle,
 * it would be full again and its 429 long over.  One a 429 still holds is
 * reused only when every bucket is held.
 */
static PaceBucket *
claim_bucket(Pace *p, TimestampTz now)
{
	PaceBucket *b = find_bucket(p);

	if (b == NULL)
	{
		int			victim = 0;

		for (int i = 1; i < table->nbuckets; i++)
			if (better_to_reuse(&table->buckets[i], &table->buckets[victim], now))
				victim = i;
		b = &table->buckets[victim];
		memcpy(b->account, p->account, ACCOUNT_LEN);
		b->in_use = true;
		b->tokens = 0;
		b->refilled_at = 0;
		b->closed_until = 0;
		p->slot = victim;
	}
	b->used_at = Max(b->used_at, now);
	return b;
}

static double
rate_per_second(Pace *p)
{
	return p->per_minute ? *p->limit / 60.0 : *p->limit;
}

/*
 * Ms until the bucket has a token (0: it has one now), refilled up to now
 * at this worker's rate; mutex held.  Another worker may have refilled it
 * at a later now than this one's: time never runs back.
 */
static long
pace_wait(Pace *p, PaceBucket *b, TimestampTz now)
{
	double		rate = rate_per_second(p);
	double		burst;

	if (now < b->closed_until)
		return (long) ((b->closed_until - now) / 1000) + 1;
	if (rate <= 0)
		return 0;				/* pacing off */
	burst = Max(1.0, rate / 10.0);
	if (b->refilled_at == 0)
		b->tokens = burst;
	else if (now > b->refilled_at)
		b->tokens = Min(burst, b->tokens + rate * (now - b->refilled_at) / 1e6);
	else
		b->tokens = Min(burst, b->tokens);
	b->refilled_at = Max(b->refilled_at, now);
	if (b->tokens >= 1.0)
		return 0;
	return (long) ((1.0 - b->tokens) / rate * 1000.0) + 1;
}

static void
pace_spend(Pace *p, PaceBucket *b)
{
	if (b && rate_per_second(p) > 0)
		b->tokens -= 1.0;
}

bool
pace_take(const HttpExchange *ex, TimestampTz now, long *wait_ms)
{
	Pace	   *p = pace_of(ex->provider);
	Pace	   *also = pace_of(ex->pace_also);
	PaceBucket *pb = NULL;
	PaceBucket *ab = NULL;
	long		wait = 0;

	SpinLockAcquire(&table->mutex);
	if (p)
	{
		pb = claim_bucket(p, now);
		wait = pace_wait(p, pb, now);
	}
	if (also)
	{
		ab = claim_bucket(also, now);
		wait = Max(wait, pace_wait(also, ab, now));
	}
	if (wait == 0)
	{
		/* both or neither: a token spent while the other bucket says wait
		 * would be lost */
		pace_spend(p, pb);
		pace_spend(also, ab);
	}
	SpinLockRelease(&table->mutex);
	if (wait > 0)
		*wait_ms = wait;
	return wait == 0;
}

void
pace_close(const char *provider, TimestampTz until)
{
	Pace	   *p = pace_of(provider);
	TimestampTz now = GetCurrentTimestamp();
	PaceBucket *b;

	if (p == NULL)
		return;
	SpinLockAcquire(&table->mutex);
	b = claim_bucket(p, now);
	/* never shortened: a 429 with a shorter Retry-After, maybe another
	 * worker's sharing the account, must not reopen it early */
	if (until > b->closed_until)
		b->closed_until = until;
	SpinLockRelease(&table->mutex);
}

TimestampTz
pace_closed_until(const char *provider)
{
	Pace	   *p = pace_of(provider);
	PaceBucket *b;
	TimestampTz until = 0;

	if (p == NULL)
		return 0;
	SpinLockAcquire(&table->mutex);
	b = find_bucket(p);
	if (b)
		until = b->closed_until;
	SpinLockRelease(&table->mutex);
	return until;
}
