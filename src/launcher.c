/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: waits for the database named by celloattr.database,
 *	  starts the worker there, and starts it again when it stops.
 *
 * The launcher is connected to no database, so it can wait for one that
 * does not exist yet (or was dropped) without failing and being restarted
 * in a loop.  A DROP DATABASE of the worker's database asks the worker to
 * leave first (the utility hook of statement.c, in every backend), so the drop does
 * not fail on "being accessed by other users"; WITH (FORCE) terminates it
 * as it would any session.  Either way the launcher starts a new worker
 * once the database is back.  Only a drop that PostgreSQL will let through
 * (a superuser's or the owner's) asks: no other role can stop the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/acl.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "worker.h"

/* How often the launcher looks for the database while it is missing. */
#define LAUNCHER_NAP_MS 1000
/* How long a stopped worker rests before it is started again. */
#define RESTART_DELAY_MS 1000
/* How long DROP DATABASE waits for the worker to leave. */
#define DROP_WAIT_MS 10000

static void
start_worker(Oid database, BackgroundWorkerHandle **handle)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "celloattr");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "celloattr_worker_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "celloattr worker");
	snprintf(w.bgw_type, BGW_MAXLEN, "celloattr worker");
	w.bgw_main_arg = ObjectIdGetDatum(database);
	w.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&w, handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not start the celloattr worker"),
				 errhint("Raise max_worker_processes.")));
		*handle = NULL;
	}
}

/*
 * The database's oid, or InvalidOid.  Connected to no database we can read
 * only shared catalogs, and only by a plain scan (as the autovacuum
 * launcher does): indexes would need pg_class.
 */
static Oid
lookup_database(void)
{
	Oid			oid = InvalidOid;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), celloattr_database) == 0)
		{
			oid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return oid;
}

void
celloattr_launcher_main(Datum main_arg)
{
	BackgroundWorkerHandle *handle = NULL;
	TimestampTz start_after = 0;
	bool		said_missing = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("celloattr launcher");

	while (!ShutdownRequestPending)
	{
		long		nap = LAUNCHER_NAP_MS;
		pid_t		pid;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (handle && GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED)
		{
			pfree(handle);
			handle = NULL;
			start_after = GetCurrentTimestamp() + RESTART_DELAY_MS * 1000L;
		}
		if (handle == NULL && celloattr_shared->drop_requests == 0 &&
			GetCurrentTimestamp() >= start_after)
		{
			Oid			database = lookup_database();

			if (OidIsValid(database))
			{
				start_worker(database, &handle);
				said_missing = false;
			}
			else if (!said_missing)
			{
				ereport(LOG,
						(errmsg("celloattr launcher: database \"%s\" does not exist; waiting for it",
								celloattr_database),
						 errhint("Create it, or set celloattr.database and restart the server.")));
				said_missing = true;
			}
		}
		if (handle)
			nap = 10 * LAUNCHER_NAP_MS; /* the worker's exit sets our latch */

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

/* This backend asked the worker to leave (one of drop_requests). */
static bool asked_worker_to_leave = false;

/*
 * Whether DROP DATABASE will get past its own checks: the same ones dropdb()
 * makes before it waits for other sessions to leave (the database exists,
 * the user owns it, it is not the current database nor a template, and the
 * command is not in a transaction block, which fails as PostgreSQL would).
 * Only then is the worker asked to leave: a drop that is refused must not
 * stop it.
 */
static bool
drop_will_proceed(DropdbStmt *stmt, bool is_top_level)
{
	Oid			db;
	HeapTuple	tup;
	bool		is_template;

	PreventInTransactionBlock(is_top_level, "DROP DATABASE");
	db = get_database_oid(stmt->dbname, true);
	if (!OidIsValid(db) || db == MyDatabaseId ||
		!celloattr_database_ownercheck(db, GetUserId()))
		return false;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(db));
	if (!HeapTupleIsValid(tup))
		return false;
	is_template = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return !is_template;
}

/* However this backend's command ends: error, cancel, or the backend exiting. */
static void
withdraw_drop_request(int code, Datum arg)
{
	celloattr_drop_database_end();
}

/*
 * DROP DATABASE of the worker's database: ask the worker to leave and wait
 * until it has, then let the drop proceed (statement.c calls this before
 * the command and celloattr_drop_database_end in the PG_FINALLY around it).
 * An error or a cancel while waiting withdraws the request here; a backend
 * that exits meanwhile (FATAL skips PG_FINALLY) in a before_shmem_exit
 * callback.  The
 * launcher starts no worker while any drop request stands; once none does,
 * it starts one again if the database is still there.
 */
void
celloattr_drop_database_begin(Node *stmt, bool is_top_level)
{
	static bool exit_callback_registered = false;
	Latch	   *latch;

	if (celloattr_shared == NULL || !IsA(stmt, DropdbStmt) ||
		celloattr_database == NULL ||
		strcmp(((DropdbStmt *) stmt)->dbname, celloattr_database) != 0 ||
		!drop_will_proceed((DropdbStmt *) stmt, is_top_level))
		return;

	if (!exit_callback_registered)
	{
		before_shmem_exit(withdraw_drop_request, 0);
		exit_callback_registered = true;
	}
	SpinLockAcquire(&celloattr_shared->mutex);
	if (!asked_worker_to_leave)
		celloattr_shared->drop_requests++;
	asked_worker_to_leave = true;
	latch = celloattr_shared->worker_latch;
	SpinLockRelease(&celloattr_shared->mutex);
	if (latch)
		SetLatch(latch);
	PG_TRY();
	{
		for (int waited = 0; waited < DROP_WAIT_MS; waited += 10)
		{
			pid_t		pid;

			SpinLockAcquire(&celloattr_shared->mutex);
			pid = celloattr_shared->worker_pid;
			SpinLockRelease(&celloattr_shared->mutex);
			if (pid == 0)
				break;
			CHECK_FOR_INTERRUPTS();
			pg_usleep(10000L);
		}
	}
	PG_CATCH();
	{
		/* cancelled while waiting: the drop will not run */
		celloattr_drop_database_end();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

void
celloattr_drop_database_end(void)
{
	if (!asked_worker_to_leave)
		return;
	SpinLockAcquire(&celloattr_shared->mutex);
	celloattr_shared->drop_requests--;
	asked_worker_to_leave = false;
	SpinLockRelease(&celloattr_shared->mutex);
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
