/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  The worker's live statistics in shared memory, and the function
 *	  behind the celloattr.worker_status view.
 *
 * The view is meant to be polled (a dashboard, psql's \watch), also while
 * the worker drains a backlog at thousands of requests a second: reading
 * it touches no table and takes only the spinlock of the block, held for
 * a copy of a few hundred bytes.  The worker's updates are as short, one
 * per request sent, per answer and per loop.  Counters start from zero
 * when a worker starts; a worker that stopped leaves its last figures,
 * shown as 'stopped'.  Each worker slot has its block; the view shows the
 * worker of the database it is read in, nothing of the others'.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "dbtext.h"
#include "stats.h"
#include "worker.h"

/* The providers, in the view's order. */
static const char *const provider_names[] = {"stripe", "chargebee", "cello"};

#define NPROVIDERS lengthof(provider_names)

/* Bytes of the last error kept: the view is for a glance, the log has it all. */
#define LAST_ERROR_LEN 200

typedef struct ProviderStats
{
	uint64		sent;
	uint64		answered_2xx;
	uint64		answered_4xx;	/* 429 apart */
	uint64		answered_5xx;
	uint64		answered_429;
	uint64		answered_other; /* 1xx, 3xx: no redirect is followed */
	uint64		transport_errors;	/* no answer: timeouts, refused, cancelled */
	double		rate;			/* requests per second; 0: pacing off */
	TimestampTz closed_until;	/* held back by a 429 until then */
	TimestampTz last_error_at;
	char		last_error[LAST_ERROR_LEN];
} ProviderStats;

typedef struct WorkerStats
{
	slock_t		mutex;
	pid_t		pid;			/* 0 while no worker runs */
	Oid			database;
	TimestampTz started_at;		/* 0 until a worker has started */
	WorkerState state;
	int			running;
	int			in_flight;
	int			waiting;
	uint64		claimed;
	uint64		recorded;
	ProviderStats providers[NPROVIDERS];
} WorkerStats;

/* A block per worker slot (celloattr.max_workers); the worker's own. */
static WorkerStats *all_stats = NULL;
static WorkerStats *stats = NULL;

static const char *const state_names[] = {
	[WORKER_STARTING] = "starting",
	[WORKER_IDLE] = "idle",
	[WORKER_WORKING] = "working",
	[WORKER_PAUSED] = "paused",
	[WORKER_NO_SECRETS] = "waiting for secrets",
	[WORKER_STOPPING] = "stopping",
	[WORKER_STOPPED] = "stopped",
};

Size
stats_shmem_size(void)
{
	return mul_size(celloattr_max_workers, sizeof(WorkerStats));
}

/* Called with AddinShmemInitLock held. */
void
stats_shmem_init(void)
{
	bool		found;

	all_stats = ShmemInitStruct("celloattr worker stats", stats_shmem_size(), &found);
	if (!found)
	{
		memset(all_stats, 0, stats_shmem_size());
		for (int i = 0; i < celloattr_max_workers; i++)
		{
			SpinLockInit(&all_stats[i].mutex);
			all_stats[i].state = WORKER_STOPPED;
		}
	}
}

static ProviderStats *
provider_stats(const char *provider)
{
	for (size_t i = 0; i < NPROVIDERS; i++)
		if (strcmp(provider_names[i], provider) == 0)
			return &stats->providers[i];
	return NULL;
}

void
stats_worker_started(void)
{
	stats = &all_stats[celloattr_my_slot - celloattr_shared->slots];
	SpinLockAcquire(&stats->mutex);
	memset(&stats->providers, 0, sizeof(stats->providers));
	stats->pid = MyProcPid;
	stats->database = MyDatabaseId;
	stats->started_at = GetCurrentTimestamp();
	stats->state = WORKER_STARTING;
	stats->running = stats->in_flight = stats->waiting = 0;
	stats->claimed = stats->recorded = 0;
	SpinLockRelease(&stats->mutex);
}

void
stats_worker_stopped(void)
{
	if (stats == NULL)
		return;					/* it left before it started */
	SpinLockAcquire(&stats->mutex);
	if (stats->pid == MyProcPid)
	{
		stats->pid = 0;
		stats->state = WORKER_STOPPED;
		stats->running = stats->in_flight = stats->waiting = 0;
	}
	SpinLockRelease(&stats->mutex);
}

void
stats_loop(WorkerState state, int running, int in_flight)
{
	/* the worker's pacing rates: its settings (Chargebee's per minute) */
	double		rates[NPROVIDERS] = {celloattr_stripe_rate_limit,
		celloattr_chargebee_rate_limit / 60.0, celloattr_cello_rate_limit};
	TimestampTz held[NPROVIDERS];

	/* held back by a 429 (pace.c): until then */
	for (size_t i = 0; i < NPROVIDERS; i++)
		held[i] = pace_closed_until(provider_names[i]);
	SpinLockAcquire(&stats->mutex);
	stats->state = state;
	stats->running = running;
	stats->in_flight = in_flight;
	/* a step running holds a transfer on the wire or waits to send one */
	stats->waiting = Max(running - in_flight, 0);
	for (size_t i = 0; i < NPROVIDERS; i++)
	{
		stats->providers[i].rate = rates[i];
		stats->providers[i].closed_until = held[i];
	}
	SpinLockRelease(&stats->mutex);
}

void
stats_claimed(int n)
{
	SpinLockAcquire(&stats->mutex);
	stats->claimed += n;
	SpinLockRelease(&stats->mutex);
}

void
stats_recorded(int n)
{
	SpinLockAcquire(&stats->mutex);
	stats->recorded += n;
	SpinLockRelease(&stats->mutex);
}

void
stats_sent(const char *provider)
{
	ProviderStats *p = provider_stats(provider);

	if (p == NULL)
		return;
	SpinLockAcquire(&stats->mutex);
	p->sent++;
	SpinLockRelease(&stats->mutex);
}

void
stats_answered(const HttpExchange *ex, const char *kind)
{
	ProviderStats *p = provider_stats(ex->provider);
	char	   *error = NULL;
	int			len = 0;

	if (p == NULL)
		return;
	/* built before the spinlock: nothing that may fail is done under it */
	if (ex->error)
		error = psprintf("%s: %s", kind, scrubbed_text(ex->error));
	else if (ex->status < 200 || ex->status >= 300)
		error = psprintf("%s: HTTP %ld", kind, ex->status);
	if (error)
		len = pg_mbcliplen(error, strlen(error), LAST_ERROR_LEN - 1);

	SpinLockAcquire(&stats->mutex);
	if (ex->error)
		p->transport_errors++;
	else if (ex->status == 429)
		p->answered_429++;
	else if (ex->status >= 200 && ex->status < 300)
		p->answered_2xx++;
	else if (ex->status >= 400 && ex->status < 500)
		p->answered_4xx++;
	else if (ex->status >= 500 && ex->status < 600)
		p->answered_5xx++;
	else
		p->answered_other++;
	if (error)
	{
		memcpy(p->last_error, error, len);
		p->last_error[len] = '\0';
		p->last_error_at = GetCurrentTimestamp();
	}
	SpinLockRelease(&stats->mutex);
}

/*
 * celloattr._worker_status(): a row per provider of the worker that runs
 * (or last ran) since the server started; none before a worker started or
 * without the library preloaded.
 */
PG_FUNCTION_INFO_V1(cello_worker_status);
Datum
cello_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WorkerStats copy;
	TimestampTz now = GetCurrentTimestamp();
	char	   *database;

	InitMaterializedSRF(fcinfo, 0);
	if (all_stats == NULL)
		return (Datum) 0;

	/* this database's worker: the last one started in it */
	copy.started_at = 0;
	for (int i = 0; i < celloattr_max_workers; i++)
	{
		WorkerStats *block = &all_stats[i];

		SpinLockAcquire(&block->mutex);
		if (block->database == MyDatabaseId && block->started_at > copy.started_at)
			memcpy(&copy, block, sizeof(WorkerStats));
		SpinLockRelease(&block->mutex);
	}
	if (copy.started_at == 0)
		return (Datum) 0;
	database = get_database_name(copy.database);

	for (size_t i = 0; i < NPROVIDERS; i++)
	{
		ProviderStats *p = &copy.providers[i];
		Datum		values[21];
		bool		nulls[21];
		int			c = 0;

		memset(nulls, false, sizeof(nulls));
		values[c] = database ? CStringGetTextDatum(database) : (Datum) 0;
		nulls[c++] = database == NULL;
		values[c] = Int32GetDatum(copy.pid);
		nulls[c++] = copy.pid == 0;
		values[c++] = CStringGetTextDatum(state_names[copy.state]);
		values[c++] = TimestampTzGetDatum(copy.started_at);
		values[c++] = Int32GetDatum(copy.running);
		values[c++] = Int32GetDatum(copy.in_flight);
		values[c++] = Int32GetDatum(copy.waiting);
		values[c++] = Int64GetDatum((int64) copy.claimed);
		values[c++] = Int64GetDatum((int64) copy.recorded);
		values[c++] = CStringGetTextDatum(provider_names[i]);
		values[c++] = Int64GetDatum((int64) p->sent);
		values[c++] = Int64GetDatum((int64) p->answered_2xx);
		values[c++] = Int64GetDatum((int64) p->answered_4xx);
		values[c++] = Int64GetDatum((int64) p->answered_5xx);
		values[c++] = Int64GetDatum((int64) p->answered_429);
		values[c++] = Int64GetDatum((int64) p->answered_other);
		values[c++] = Int64GetDatum((int64) p->transport_errors);
		values[c++] = Float8GetDatum(p->rate);
		/* held back only while the 429's wait lasts, and only by a running worker */
		values[c] = TimestampTzGetDatum(p->closed_until);
		nulls[c++] = copy.pid == 0 || p->closed_until <= now;
		values[c] = p->last_error_at ? CStringGetTextDatum(p->last_error) : (Datum) 0;
		nulls[c++] = p->last_error_at == 0;
		values[c] = TimestampTzGetDatum(p->last_error_at);
		nulls[c++] = p->last_error_at == 0;
		Assert(c == lengthof(values));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
