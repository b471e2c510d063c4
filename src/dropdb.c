/*-------------------------------------------------------------------------
 *
 * dropdb.c
 *	  DROP DATABASE of a database a celloattr worker serves: the worker is
 *	  asked to leave first, so the drop does not fail on "being accessed by
 *	  other users".
 *
 * statement.c calls celloattr_drop_database_begin before the command (in
 * every backend: the library is preloaded) and celloattr_drop_database_end
 * in the PG_FINALLY around it.  The backend names the database in the
 * shared dropping list: its worker leaves at its next round (worker.c),
 * and the launcher starts none there while the entry stands.  Once the
 * launcher has freed the worker's slot, the drop proceeds.  A database
 * without a worker is named too: the launcher must not start one (after
 * a crash, or to look for the extension) while the drop waits for others.
 *
 * Only a drop that PostgreSQL will let through (a superuser's or the
 * owner's) asks: no other role can stop a worker this way.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/syscache.h"

#include "celloattr.h"
#include "worker.h"

/* How long DROP DATABASE waits for the worker to leave. */
#define DROP_WAIT_MS 10000

/* The dropping entry this backend holds (its index), or -1. */
static int	my_drop_entry = -1;

/*
 * Whether DROP DATABASE will get past its own checks: the same ones dropdb()
 * makes before it waits for other sessions to leave (the database exists,
 * the user owns it, it is not the current database nor a template, and the
 * command is not in a transaction block, which fails as PostgreSQL would).
 * Only then is the worker asked to leave: a drop that is refused must not
 * stop it.
 */
static Oid
database_to_drop(DropdbStmt *stmt, bool is_top_level)
{
	Oid			db;
	HeapTuple	tup;
	bool		is_template;

	PreventInTransactionBlock(is_top_level, "DROP DATABASE");
	db = get_database_oid(stmt->dbname, true);
	if (!OidIsValid(db) || db == MyDatabaseId ||
		!celloattr_database_ownercheck(db, GetUserId()))
		return InvalidOid;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(db));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	is_template = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return is_template ? InvalidOid : db;
}

/* However this backend's command ends: error, cancel, or the backend exiting. */
static void
withdraw_drop_request(int code, Datum arg)
{
	celloattr_drop_database_end();
}

/* Whether a slot still belongs to a worker of that database. */
static bool
worker_serves(Oid database)
{
	bool		serves = false;

	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < celloattr_shared->nslots; i++)
		if (celloattr_shared->slots[i].database == database)
			serves = true;
	SpinLockRelease(&celloattr_shared->mutex);
	return serves;
}

/* Name the database in the dropping list; false when the list is full. */
static bool
add_drop_request(Oid database)
{
	int			free_entry = -1;

	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < CELLOATTR_MAX_DROPS && my_drop_entry < 0; i++)
	{
		if (celloattr_shared->drop_requests[i] > 0 &&
			celloattr_shared->dropping[i] == database)
			my_drop_entry = i;
		else if (celloattr_shared->drop_requests[i] == 0 && free_entry < 0)
			free_entry = i;
	}
	if (my_drop_entry < 0 && free_entry >= 0)
	{
		my_drop_entry = free_entry;
		celloattr_shared->dropping[free_entry] = database;
	}
	if (my_drop_entry >= 0)
		celloattr_shared->drop_requests[my_drop_entry]++;
	SpinLockRelease(&celloattr_shared->mutex);
	return my_drop_entry >= 0;
}

void
celloattr_drop_database_begin(Node *stmt, bool is_top_level)
{
	static bool exit_callback_registered = false;
	Oid			database;

	if (celloattr_shared == NULL || !IsA(stmt, DropdbStmt) || my_drop_entry >= 0)
		return;
	database = database_to_drop((DropdbStmt *) stmt, is_top_level);
	if (!OidIsValid(database))
		return;

	if (!exit_callback_registered)
	{
		before_shmem_exit(withdraw_drop_request, 0);
		exit_callback_registered = true;
	}
	if (!add_drop_request(database))
		return;
	celloattr_wake_worker_of(database);
	PG_TRY();
	{
		/* the launcher frees the slot once the worker has stopped */
		for (int waited = 0; waited < DROP_WAIT_MS && worker_serves(database);
			 waited += 10)
		{
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
	if (my_drop_entry < 0)
		return;
	SpinLockAcquire(&celloattr_shared->mutex);
	celloattr_shared->drop_requests[my_drop_entry]--;
	SpinLockRelease(&celloattr_shared->mutex);
	my_drop_entry = -1;
	/* gone or not, the launcher looks at the databases again: once the
	 * drop committed, or now if it failed */
	celloattr_poke_launcher(false);
	celloattr_poke_launcher_at_commit(false);
}
