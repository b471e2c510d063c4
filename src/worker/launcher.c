/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: finds the databases to serve, starts a worker in each
 *	  where the extension is created, and starts it again when it stops.
 *
 * celloattr.database names the databases: '*' for every one that accepts
 * connections and is not a template, or a list.  The launcher is connected
 * to no database (it can wait for one that does not exist yet, or was
 * dropped, without failing), so it cannot read pg_extension of the others:
 * it starts a worker in each database it does not know about, which looks,
 * and leaves at once when the extension is not there (worker.c), marking
 * its slot.  The launcher then starts none there until a CREATE EXTENSION
 * celloattr commits somewhere (slots.c counts them) or a reload.  A worker
 * also leaves when the extension is dropped, and when its database is
 * dropped (vacate.c).
 *
 * celloattr.max_workers caps the workers, the lookers included: a database
 * beyond the cap waits, said once in the log, until a slot is free.  The
 * launcher looks at pg_database every LOOK_MS, and at once when a backend
 * created, renamed or dropped a database or created the extension; the
 * databases are taken in oid order, so who waits beyond the cap does not
 * change from one look to the next.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "worker.h"

/* How often the launcher looks at pg_database unasked. */
#define LOOK_MS 10000
/* How long a stopped worker rests before it is started again. */
#define RESTART_DELAY_MS 1000

/* What the launcher knows of a database it serves. */
typedef enum ServedState
{
	SERVED_UNKNOWN,				/* not looked at: start a worker to look */
	SERVED_RUNNING,				/* a worker is registered (or runs) there */
	SERVED_RESTART,				/* its worker stopped: again after a rest */
	SERVED_NO_EXTENSION			/* no celloattr there when last looked */
} ServedState;

typedef struct Served
{
	Oid			database;
	NameData	name;
	ServedState state;
	int			slot;			/* while running */
	BackgroundWorkerHandle *handle; /* while running */
	TimestampTz start_after;	/* SERVED_RESTART */
	uint32		created_seen;	/* SERVED_NO_EXTENSION: the count it saw */
	bool		wanted;			/* in pg_database and celloattr.database */
	bool		seen;			/* found by the look under way */
	bool		told_to_leave;	/* no longer wanted: terminated */
	bool		said_capped;	/* "waits for a slot" logged */
	bool		said_no_process;	/* "could not start" logged */
} Served;

/* The databases, in oid order; in TopMemoryContext. */
static Served *served = NULL;
static int	nserved = 0;
static int	served_cap = 0;

/* The names of celloattr.database that were missing at the last look, logged. */
static char *said_missing = NULL;

static Served *
served_entry(Oid database)
{
	for (int i = 0; i < nserved; i++)
		if (served[i].database == database)
			return &served[i];
	return NULL;
}

/* A new entry at its place in oid order. */
static Served *
add_served(Oid database, const char *name)
{
	int			at = nserved;

	if (nserved == served_cap)
	{
		served_cap = Max(16, served_cap * 2);
		served = served ? repalloc(served, served_cap * sizeof(Served)) :
			MemoryContextAlloc(TopMemoryContext, served_cap * sizeof(Served));
	}
	while (at > 0 && served[at - 1].database > database)
		at--;
	memmove(&served[at + 1], &served[at], (nserved - at) * sizeof(Served));
	nserved++;
	memset(&served[at], 0, sizeof(Served));
	served[at].database = database;
	served[at].state = SERVED_UNKNOWN;
	served[at].slot = -1;
	namestrcpy(&served[at].name, name);
	return &served[at];
}

static void
remove_served(Served *e)
{
	int			at = e - served;

	memmove(&served[at], &served[at + 1], (nserved - at - 1) * sizeof(Served));
	nserved--;
}

/*
 * Look at pg_database: every database celloattr.database names gets an
 * entry, wanted; entries of others are not wanted any more.  Connected to
 * no database we can read only shared catalogs, and only by a plain scan
 * (as the autovacuum launcher does): indexes would need pg_class.
 */
static void
look_at_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	StringInfoData missing;
	List	   *listed = celloattr_listed_databases();
	bool		all = listed == NIL;	/* '*' (the list empties as names are found) */
	ListCell   *lc;

	/* wanted changes only once the whole scan went through: a look that
	 * fails must not send every worker away */
	for (int i = 0; i < nserved; i++)
		served[i].seen = false;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		const char *name = NameStr(db->datname);
		Served	   *e;

		if (!all)
		{
			bool		named = false;

			foreach(lc, listed)
				if (strcmp(lfirst(lc), name) == 0)
				{
					named = true;
					listed = foreach_delete_current(listed, lc);
				}
			if (!named)
				continue;
		}
		else if (db->datistemplate)
			continue;			/* '*': no template */
		/* named or not, a worker there would fail to connect, every second */
		if (!db->datallowconn)
			continue;
#ifdef DATCONNLIMIT_INVALID_DB
		if (db->datconnlimit == DATCONNLIMIT_INVALID_DB)
			continue;			/* a DROP DATABASE that failed half-way */
#endif
		e = served_entry(db->oid);
		if (e == NULL)
			e = add_served(db->oid, name);
		else
			namestrcpy(&e->name, name); /* renamed: for the messages */
		e->seen = true;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	for (int i = 0; i < nserved; i++)
		served[i].wanted = served[i].seen;

	/* what is left of the list does not exist (yet): said once per change */
	initStringInfo(&missing);
	foreach(lc, listed)
		appendStringInfo(&missing, "%s\"%s\"", missing.len ? ", " : "",
						 (char *) lfirst(lc));
	if (missing.len > 0 && (said_missing == NULL || strcmp(said_missing, missing.data) != 0))
		ereport(LOG,
				(errmsg("celloattr launcher: database %s named in celloattr.database does not exist; waiting for it",
						missing.data),
				 errhint("Create it, or change celloattr.database and reload.")));
	if (said_missing)
		pfree(said_missing);
	said_missing = MemoryContextStrdup(TopMemoryContext, missing.data);
	pfree(missing.data);
}

/* A free slot, taken for the database; its ticket's slot is -1 when all are taken. */
static WorkerTicket
take_slot(Oid database)
{
	WorkerTicket ticket = {-1, 0};

	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < celloattr_shared->nslots && ticket.slot < 0; i++)
		if (!OidIsValid(celloattr_shared->slots[i].database))
		{
			ticket.slot = i;
			ticket.generation = ++celloattr_shared->generations;
			memset(&celloattr_shared->slots[i], 0, sizeof(WorkerSlot));
			celloattr_shared->slots[i].database = database;
			celloattr_shared->slots[i].generation = ticket.generation;
		}
	SpinLockRelease(&celloattr_shared->mutex);
	return ticket;
}

/*
 * Free the slots no entry of ours holds whose worker has left (or never
 * came): those of the workers a launcher before this one started.  The
 * number of them still running.
 */
static int
free_orphan_slots(void)
{
	bool	   *held = palloc0(celloattr_shared->nslots * sizeof(bool));
	int			left = 0;

	for (int i = 0; i < nserved; i++)
		if (served[i].state == SERVED_RUNNING)
			held[served[i].slot] = true;
	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < celloattr_shared->nslots; i++)
	{
		WorkerSlot *slot = &celloattr_shared->slots[i];

		if (held[i] || !OidIsValid(slot->database))
			continue;
		if (slot->pid == 0)
			memset(slot, 0, sizeof(WorkerSlot));
		else
			left++;
	}
	SpinLockRelease(&celloattr_shared->mutex);
	pfree(held);
	return left;
}

/*
 * A launcher that starts again (after an error: bgw_restart_time) finds
 * the slots of the workers its predecessor started, whose handles it does
 * not have.  Those not yet taken by their worker are freed at once, so
 * that a worker registered but not yet running finds its ticket stale and
 * leaves; those running are asked to leave (they stop as on a shutdown,
 * letting their transfers finish), and waited for a while.  One still
 * running after that keeps its slot until it leaves (free_orphan_slots,
 * each round), and no other worker can start in its database meanwhile
 * (celloattr_slot_attach).
 */
static void
reclaim_slots(void)
{
	int			left = free_orphan_slots();

	/* under the lock: a pid seen there is a live worker, not a reused pid */
	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < celloattr_shared->nslots; i++)
		if (celloattr_shared->slots[i].pid != 0)
			kill(celloattr_shared->slots[i].pid, SIGTERM);
	SpinLockRelease(&celloattr_shared->mutex);
	for (int waited = 0; left > 0 && waited < 60000 && !ShutdownRequestPending;
		 waited += 100)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		left = free_orphan_slots();
	}
}

static void
free_slot(int slot, bool *no_extension, uint32 *created_seen)
{
	SpinLockAcquire(&celloattr_shared->mutex);
	*no_extension = celloattr_shared->slots[slot].no_extension;
	*created_seen = celloattr_shared->slots[slot].created_seen;
	memset(&celloattr_shared->slots[slot], 0, sizeof(WorkerSlot));
	SpinLockRelease(&celloattr_shared->mutex);
}

/* Start a worker for the entry in a free slot; false when none is free. */
static bool
start_worker(Served *e)
{
	BackgroundWorker w;
	WorkerTicket ticket = take_slot(e->database);
	MemoryContext old;
	bool		registered;

	if (ticket.slot < 0)
		return false;
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "celloattr");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "celloattr_worker_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "celloattr worker");
	snprintf(w.bgw_type, BGW_MAXLEN, "celloattr worker");
	w.bgw_main_arg = ObjectIdGetDatum(e->database);
	StaticAssertStmt(sizeof(WorkerTicket) <= BGW_EXTRALEN, "the ticket fits in bgw_extra");
	memcpy(w.bgw_extra, &ticket, sizeof(ticket));
	w.bgw_notify_pid = MyProcPid;
	old = MemoryContextSwitchTo(TopMemoryContext);	/* the handle lives on */
	registered = RegisterDynamicBackgroundWorker(&w, &e->handle);
	MemoryContextSwitchTo(old);
	if (!registered)
	{
		bool		no_extension;
		uint32		created_seen;

		free_slot(ticket.slot, &no_extension, &created_seen);
		/* tried again every second: said once until a start succeeds */
		if (!e->said_no_process)
			ereport(WARNING,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("could not start the celloattr worker for database \"%s\"",
							NameStr(e->name)),
					 errhint("Raise max_worker_processes.")));
		e->said_no_process = true;
		e->handle = NULL;
		e->state = SERVED_RESTART;
		e->start_after = GetCurrentTimestamp() + RESTART_DELAY_MS * 1000L;
		return true;			/* not the cap: the next database may fit */
	}
	e->slot = ticket.slot;
	e->state = SERVED_RUNNING;
	e->said_capped = false;
	e->said_no_process = false;
	e->told_to_leave = false;	/* this worker was not told */
	return true;
}

/* A worker that stopped: free its slot, and decide when to start again. */
static void
collect_stopped(Served *e, TimestampTz now)
{
	pid_t		pid;
	bool		no_extension;
	uint32		created_seen;

	if (e->state != SERVED_RUNNING ||
		GetBackgroundWorkerPid(e->handle, &pid) != BGWH_STOPPED)
		return;
	pfree(e->handle);
	e->handle = NULL;
	free_slot(e->slot, &no_extension, &created_seen);
	e->slot = -1;
	if (no_extension)
	{
		e->state = SERVED_NO_EXTENSION;
		e->created_seen = created_seen;
	}
	else
	{
		e->state = SERVED_RESTART;
		e->start_after = now + RESTART_DELAY_MS * 1000L;
	}
}

/* Start what is due, in oid order, while slots last; ms until the next is due. */
static long
start_due(TimestampTz now, uint32 extensions_created, bool look_again)
{
	long		nap = LOOK_MS;

	for (int i = 0; i < nserved; i++)
	{
		Served	   *e = &served[i];

		if (!e->wanted || celloattr_database_vacating(e->database))
			continue;
		if (e->state == SERVED_NO_EXTENSION &&
			(look_again || e->created_seen != extensions_created))
			e->state = SERVED_UNKNOWN;
		if (e->state == SERVED_RESTART && now < e->start_after)
		{
			nap = Min(nap, (long) ((e->start_after - now) / 1000) + 1);
			continue;
		}
		if (e->state != SERVED_UNKNOWN && e->state != SERVED_RESTART)
			continue;
		if (!start_worker(e))
		{
			if (!e->said_capped)
				ereport(LOG,
						(errmsg("celloattr launcher: all %d worker slots are taken; database \"%s\" waits for one",
								celloattr_max_workers, NameStr(e->name)),
						 errhint("Raise celloattr.max_workers (a restart), or serve fewer databases (celloattr.database).")));
			e->said_capped = true;
		}
	}
	return nap;
}

static void
clear_launcher_latch(int code, Datum arg)
{
	SpinLockAcquire(&celloattr_shared->mutex);
	celloattr_shared->launcher_latch = NULL;
	SpinLockRelease(&celloattr_shared->mutex);
}

void
celloattr_launcher_main(Datum main_arg)
{
	sigjmp_buf	local_sigjmp_buf;
	volatile uint32 databases_seen = 0;
	volatile TimestampTz next_look = 0;
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("celloattr launcher");

	SpinLockAcquire(&celloattr_shared->mutex);
	celloattr_shared->launcher_latch = MyLatch;
	SpinLockRelease(&celloattr_shared->mutex);
	before_shmem_exit(clear_launcher_latch, 0);
	reclaim_slots();
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "celloattr launcher loop",
									 ALLOCSET_DEFAULT_SIZES);

	/*
	 * An ERROR (a look at pg_database that fails) is logged and the loop
	 * goes on after a second's rest: a launcher that exited would be
	 * started again, and stop every worker it does not know (reclaim_slots).
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		celloattr_recover_from_error();
	PG_exception_stack = &local_sigjmp_buf;

	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		uint32		extensions_created;
		uint32		databases_changed;
		bool		look_again = false;
		long		nap;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			look_again = true;
		}
		SpinLockAcquire(&celloattr_shared->mutex);
		extensions_created = celloattr_shared->extensions_created;
		databases_changed = celloattr_shared->databases_changed;
		SpinLockRelease(&celloattr_shared->mutex);

		now = GetCurrentTimestamp();
		for (int i = 0; i < nserved; i++)
			collect_stopped(&served[i], now);
		(void) free_orphan_slots();
		if (look_again || databases_changed != databases_seen || now >= next_look)
		{
			databases_seen = databases_changed;
			look_at_databases();
			MemoryContextSwitchTo(loop_cxt);
			next_look = now + LOOK_MS * 1000L;
		}
		/* gone, or no longer named: its worker leaves, then the entry */
		for (int i = nserved - 1; i >= 0; i--)
		{
			Served	   *e = &served[i];

			if (e->wanted)
				continue;
			if (e->state != SERVED_RUNNING)
				remove_served(e);
			else if (!e->told_to_leave)
			{
				TerminateBackgroundWorker(e->handle);
				e->told_to_leave = true;
			}
		}
		nap = start_due(now, extensions_created, look_again);
		nap = Min(nap, (long) ((next_look - now) / 1000) + 1);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(nap, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

void
celloattr_register_launcher(void)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 5;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "celloattr");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "celloattr_launcher_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "celloattr launcher");
	snprintf(w.bgw_type, BGW_MAXLEN, "celloattr launcher");
	RegisterBackgroundWorker(&w);
}
