/*-------------------------------------------------------------------------
 *
 * slots.c
 *	  The shared state that ties backends, the launcher and the workers
 *	  together: a slot per worker (celloattr.max_workers of them), and the
 *	  signals between them.
 *
 * A backend that queued work wakes the worker of its own database; one
 * whose CREATE EXTENSION celloattr committed, or that created, renamed or
 * dropped a database, wakes the launcher, which then looks at the
 * databases again instead of waiting for its next round.  A command that
 * needs a database without sessions (DROP DATABASE, ...) names it in the
 * vacating list, so that its worker leaves and the launcher starts none
 * there while the command waits (vacate.c).
 *
 * Everything here is a few stores under one spinlock: no slot is held
 * while anything that may fail or wait runs.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/shmem.h"

#include "celloattr.h"

/* This transaction created the extension, or created, changed or dropped
 * a database: tell the launcher at commit (before, it would not see it). */
static bool poke_at_commit = false;
static bool databases_at_commit = false;
/* This transaction dropped it: the worker looks once it commits. */
static bool wake_own_at_commit = false;
static bool xact_callback_registered = false;

Size
slots_shmem_size(void)
{
	return add_size(offsetof(CelloattrShared, slots),
					mul_size(celloattr_max_workers, sizeof(WorkerSlot)));
}

/* Called with AddinShmemInitLock held. */
void
slots_shmem_init(void)
{
	bool		found;

	celloattr_shared = ShmemInitStruct("celloattr", slots_shmem_size(), &found);
	if (!found)
	{
		memset(celloattr_shared, 0, slots_shmem_size());
		SpinLockInit(&celloattr_shared->mutex);
		ConditionVariableInit(&celloattr_shared->progress);
		celloattr_shared->nslots = celloattr_max_workers;
	}
}

void
celloattr_wake_worker_of(Oid database)
{
	Latch	   *latch = NULL;

	if (celloattr_shared == NULL)
		return;
	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < celloattr_shared->nslots; i++)
		if (celloattr_shared->slots[i].database == database &&
			celloattr_shared->slots[i].latch != NULL)
		{
			latch = celloattr_shared->slots[i].latch;
			break;
		}
	SpinLockRelease(&celloattr_shared->mutex);
	/* a latch stays valid while its process lives; a stale one is harmless */
	if (latch)
		SetLatch(latch);
}

void
celloattr_poke_launcher(bool extension_created)
{
	Latch	   *latch;

	if (celloattr_shared == NULL)
		return;
	SpinLockAcquire(&celloattr_shared->mutex);
	if (extension_created)
		celloattr_shared->extensions_created++;
	else
		celloattr_shared->databases_changed++;
	latch = celloattr_shared->launcher_latch;
	SpinLockRelease(&celloattr_shared->mutex);
	if (latch)
		SetLatch(latch);
}

static void
slots_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && poke_at_commit)
		celloattr_poke_launcher(true);
	if (event == XACT_EVENT_COMMIT && databases_at_commit)
		celloattr_poke_launcher(false);
	if (event == XACT_EVENT_COMMIT && wake_own_at_commit)
		celloattr_wake_worker_of(MyDatabaseId);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		poke_at_commit = databases_at_commit = wake_own_at_commit = false;
}

/*
 * After the commit only: a launcher that looked before would not see the
 * database, and a worker started before it would not see the extension.  (COMMIT PREPARED of a CREATE
 * EXTENSION runs no hook of ours: a reload, SELECT pg_reload_conf(), has
 * the launcher look at every database without a worker again.)
 */
static void
register_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(slots_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

void
celloattr_poke_launcher_at_commit(bool extension_created)
{
	if (celloattr_shared == NULL)
		return;
	register_xact_callback();
	if (extension_created)
		poke_at_commit = true;
	else
		databases_at_commit = true;
}

void
celloattr_wake_own_worker_at_commit(void)
{
	if (celloattr_shared == NULL)
		return;
	register_xact_callback();
	wake_own_at_commit = true;
}

WorkerSlot *celloattr_my_slot = NULL;

/*
 * Whatever the launcher believes, no two workers ever run in one database
 * at once (each would send the same steps' requests): a slot is taken only
 * while no other slot of the database has a live worker.  One may be left
 * by a launcher that stopped (reclaim_slots gives up waiting for it), and
 * the new launcher's worker then leaves and is started again later.
 */
bool
celloattr_slot_attach(const WorkerTicket *ticket, pid_t *other)
{
	WorkerSlot *slot;
	bool		mine;

	*other = 0;
	if (ticket->slot < 0 || ticket->slot >= celloattr_shared->nslots)
		return false;
	slot = &celloattr_shared->slots[ticket->slot];
	SpinLockAcquire(&celloattr_shared->mutex);
	mine = slot->database == MyDatabaseId && slot->generation == ticket->generation &&
		slot->pid == 0;
	for (int i = 0; mine && i < celloattr_shared->nslots; i++)
		if (celloattr_shared->slots[i].database == MyDatabaseId &&
			celloattr_shared->slots[i].pid != 0)
		{
			*other = celloattr_shared->slots[i].pid;
			mine = false;
		}
	if (mine)
	{
		slot->pid = MyProcPid;
		slot->latch = MyLatch;
	}
	SpinLockRelease(&celloattr_shared->mutex);
	if (mine)
		celloattr_my_slot = slot;
	return mine;
}

void
celloattr_slot_detach(void)
{
	if (celloattr_my_slot == NULL)
		return;
	SpinLockAcquire(&celloattr_shared->mutex);
	celloattr_my_slot->pid = 0;
	celloattr_my_slot->latch = NULL;
	SpinLockRelease(&celloattr_shared->mutex);
	celloattr_my_slot = NULL;
}

uint32
celloattr_extensions_created(void)
{
	uint32		created;

	SpinLockAcquire(&celloattr_shared->mutex);
	created = celloattr_shared->extensions_created;
	SpinLockRelease(&celloattr_shared->mutex);
	return created;
}

void
celloattr_slot_no_extension(uint32 created_seen)
{
	SpinLockAcquire(&celloattr_shared->mutex);
	celloattr_my_slot->no_extension = true;
	celloattr_my_slot->created_seen = created_seen;
	SpinLockRelease(&celloattr_shared->mutex);
}

bool
celloattr_database_vacating(Oid database)
{
	bool		vacating = false;

	if (celloattr_shared == NULL)
		return false;
	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < CELLOATTR_MAX_VACATES; i++)
		if (celloattr_shared->vacate_requests[i] > 0 &&
			celloattr_shared->vacating[i] == database)
			vacating = true;
	SpinLockRelease(&celloattr_shared->mutex);
	return vacating;
}
