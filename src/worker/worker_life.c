/*-------------------------------------------------------------------------
 *
 * worker_life.c
 *	  How a worker arrives in its database, takes a reload, and knows when
 *	  to leave: its signals, its slot, the extension's presence, and the
 *	  settings of its database.
 *
 * The launcher starts a worker in each database it serves, and in each it
 * has not seen yet, to look (launcher.c).  A worker takes the slot its
 * ticket names (never beside another worker of the same database), pins
 * its session's settings before any statement, and leaves at once when
 * the extension is not there, saying so in its slot so that the launcher
 * starts none there again until a CREATE EXTENSION.  Later it leaves when
 * the extension is dropped, when a command needs the database to itself
 * (vacate.c), and, to be started afresh, when a reload finds its
 * database's settings changed (dbsettings.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/syncrep.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "celloattr.h"
#include "stats.h"
#include "worker.h"

static void
leave_worker_slot(int code, Datum arg)
{
	celloattr_slot_detach();
	stats_worker_stopped();
}

/*
 * Whether the extension is gone from the worker's database: then its slot
 * says so, with the count of CREATE EXTENSIONs read before the look, so
 * that the launcher starts the worker again after one that it may have
 * missed (slots.c).
 */
static bool
extension_gone(void)
{
	uint32		created = celloattr_extensions_created();

	/* an error is no answer: the worker goes on, and looks again later */
	if (!queue_extension_absent())
		return false;
	celloattr_slot_no_extension(created);
	return true;
}

/*
 * SIGTERM: stop, as SignalHandlerForShutdownRequest asks (worker_round lets
 * the transfers in flight finish).  But a commit waiting for a synchronous
 * standby (synchronous_standby_names, and the worker's synchronous commits:
 * queue_commit_synchronously) ends on a cancel or a backend's die() only,
 * not on that flag: with the standby gone, the worker, and with it a fast
 * or smart shutdown of the server, would wait for ever.  So the wait is
 * cancelled, as a cancel does for a backend: the commit stands locally,
 * without the standby's word (PostgreSQL logs a WARNING that says so).
 * What the worker does with it, knowing that: worker_round puts the steps
 * of such a claim back unsent, and queue_commit_synchronously waits for no
 * standby while the worker stops.  (A wait that ended just as the signal
 * came leaves the cancel pending: an ERROR at the next interrupt check,
 * which the worker's transactions and its main loop catch.)
 */
static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (MyProc != NULL && MyProc->syncRepState == SYNC_REP_WAITING)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	SignalHandlerForShutdownRequest(postgres_signal_arg);
	errno = save_errno;
}

/*
 * Connect to the database, take the slot and look for the extension;
 * returns the database's name (TopMemoryContext), or leaves.
 */
char *
worker_arrive(Oid database_oid)
{
	char	   *database;
	pid_t		other;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(database_oid,
											  InvalidOid, 0);
	/* before any statement: no setting of the database or a role counts */
	worker_pin_settings();
	pgstat_report_appname("celloattr worker");
	celloattr_am_worker = true;
	pgstat_report_activity(STATE_IDLE, NULL);

	if (!celloattr_slot_attach((WorkerTicket *) MyBgworkerEntry->bgw_extra, &other))
	{
		/* a launcher that stopped started it, or started the one still here */
		if (other != 0)
			ereport(LOG,
					(errmsg("celloattr worker leaving: the worker of a launcher that stopped still runs in this database (pid %d)",
							(int) other)));
		proc_exit(0);
	}
	before_shmem_exit(leave_worker_slot, 0);
	database = worker_database_name();
	worker_remember_database_settings();
	if (extension_gone())
	{
		/* the launcher started it to look: said only where the list named it */
		ereport(celloattr_listed_databases() != NIL ? LOG : DEBUG1,
				(errmsg("celloattr worker: the extension is not created in database \"%s\"; a worker starts there once it is",
						database)));
		proc_exit(0);
	}
	stats_worker_started();

	return database;
}

/* SIGHUP: the files, the secrets, the accounts, the database's settings. */
void
worker_reload(void)
{
	ProcessConfigFile(PGC_SIGHUP);
	worker_pin_settings();
	celloattr_secrets_load();
	pace_accounts_changed();
	if (!ShutdownRequestPending && worker_database_settings_changed())
	{
		/* they apply as a session connects: stop, and the launcher starts us again */
		ereport(LOG,
				(errmsg("celloattr worker restarting: the celloattr settings of this database changed")));
		ShutdownRequestPending = true;
	}
}

/* Whether the worker may go on in its database (checked every round). */
bool
worker_may_stay(void)
{
	if (celloattr_database_vacating(MyDatabaseId))
		return false;			/* a DROP DATABASE, ... waits for us to leave */
	if (celloattr_extension_missing && extension_gone())
	{
		/* nothing of what is in flight can be recorded any more */
		ereport(LOG,
				(errmsg("celloattr worker leaving: the extension was dropped from this database")));
		return false;
	}
	return true;
}

/*
 * After an ERROR that reached the main loop of the worker or the launcher
 * (their sigsetjmp): logged and cleaned up as PostgreSQL's own loops do,
 * then a second's rest, so that an error that repeats does not spin.
 */
void
celloattr_recover_from_error(void)
{
	/* no context callback of the failed code */
	error_context_stack = NULL;
	HOLD_INTERRUPTS();
	EmitErrorReport();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(TopMemoryContext);
	FlushErrorState();
	RESUME_INTERRUPTS();
	pg_usleep(1000000L);
}
