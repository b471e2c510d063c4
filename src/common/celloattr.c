/*-------------------------------------------------------------------------
 *
 * celloattr.c
 *	  Library entry point: settings, shared memory (the worker's statistics
 *	  in it are stats.c's), the worker's registration, and waking the worker
 *	  when work is committed.
 *
 * The wake-up follows the outbox rule: nothing reaches the network before
 * the transaction that queued it commits.  A statement trigger on the jobs
 * table marks the transaction; its commit sets the worker's latch.  Aborted
 * or prepared transactions wake nobody (a prepared one is found by the
 * worker's poll once COMMIT PREPARED runs).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "stats.h"
#include "worker.h"

#include "celloattr.h"

PG_MODULE_MAGIC;

CelloattrShared *celloattr_shared = NULL;
bool		celloattr_preloaded = false;
bool		celloattr_am_worker = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* This transaction queued work: wake the worker at commit. */
static bool wake_at_commit = false;
/* This transaction was already warned that no worker will run its work. */
static bool warned_no_worker = false;

void		_PG_init(void);

static void
celloattr_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(add_size(add_size(MAXALIGN(slots_shmem_size()), stats_shmem_size()),
									pace_shmem_size()));
}

static void
celloattr_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	slots_shmem_init();
	stats_shmem_init();
	pace_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

static void
celloattr_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
				celloattr_wake_worker_of(MyDatabaseId);
			wake_at_commit = false;
			warned_no_worker = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			warned_no_worker = false;
			break;
		default:
			break;
	}
}

/*
 * Warn, once per transaction, when no worker will ever carry out what this
 * database queues: the library is not preloaded, or celloattr.database
 * does not name this database.
 */
static void
warn_if_no_worker(void)
{
	if (warned_no_worker)
		return;
	warned_no_worker = true;

	if (!celloattr_preloaded)
		ereport(WARNING,
				(errmsg("celloattr is not loaded through shared_preload_libraries, so no worker will carry out this repair"),
				 errdetail("The repair is recorded and stays queued until a worker runs."),
				 errhint("Add celloattr to shared_preload_libraries and restart the server.")));
	else if (!celloattr_serves_database(get_database_name(MyDatabaseId)))
		ereport(WARNING,
				(errmsg("celloattr.database does not name this database, so no worker will carry out this repair"),
				 errdetail("celloattr.database is \"%s\"; the repair is recorded and stays queued until a worker serves this database.",
						   celloattr_database),
				 errhint("Add \"%s\" to celloattr.database, or set it to '*', and reload.",
						 get_database_name(MyDatabaseId))));
}

void
celloattr_wake_worker_at_commit(void)
{
	/* the worker knows what it queued itself; waking it would spin */
	if (celloattr_am_worker)
		return;
	if (!wake_at_commit)
		warn_if_no_worker();
	wake_at_commit = true;
}

/* Statement trigger on celloattr.jobs: whatever inserted or changed jobs. */
PG_FUNCTION_INFO_V1(cello_wake_worker);
Datum
cello_wake_worker(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("celloattr._wake_worker() must be called as a trigger")));
	celloattr_wake_worker_at_commit();
	return PointerGetDatum(NULL);
}

void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;

	celloattr_preloaded = process_shared_preload_libraries_in_progress;
	celloattr_define_gucs(celloattr_preloaded);
	RegisterXactCallback(celloattr_xact_callback, NULL);
	celloattr_version_init();

	if (!celloattr_preloaded)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = celloattr_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = celloattr_shmem_startup;

	celloattr_register_launcher();
	celloattr_pending_init();
}
