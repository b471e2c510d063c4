/*-------------------------------------------------------------------------
 *
 * vacate.c
 *	  Commands that need a database without sessions, run on a database a
 *	  celloattr worker serves: DROP DATABASE, ALTER DATABASE ... RENAME TO
 *	  and SET TABLESPACE, and CREATE DATABASE ... TEMPLATE of it.  The
 *	  worker is asked to leave first, so the command does not fail on
 *	  "being accessed by other users".
 *
 * statement.c calls celloattr_vacate_database_begin before the command (in
 * every backend: the library is preloaded) and celloattr_vacate_database_end
 * in the PG_FINALLY around it.  The backend names the database in the
 * shared vacating list: its worker leaves at its next round (worker.c),
 * and the launcher starts none there while the entry stands.  Once the
 * launcher has freed the worker's slot, the command proceeds; afterwards
 * the launcher starts a worker there again (a renamed or moved database
 * keeps its oid, and a copy is a new database, found as any other).  A
 * database without a worker is named too: the launcher must not start one
 * (after a crash, or to look for the extension) while the command waits
 * for others to leave.
 *
 * Only a command that PostgreSQL will let through (a superuser's or the
 * owner's) asks: no other role can stop a worker this way.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/syscache.h"

#include "celloattr.h"
#include "worker.h"

/* How long a command waits for the worker to leave. */
#define VACATE_WAIT_MS 10000

/* The vacating entry this backend holds (its index), or -1. */
static int	my_entry = -1;

/* The value of the option of that name, or NULL. */
static const char *
option_value(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, name) == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

/*
 * The database the command needs without sessions, if it will get past
 * PostgreSQL's own checks that come before its wait for other sessions to
 * leave (the database exists, the user owns it, it is not the current
 * database, a dropped one is no template, and the command is not in a
 * transaction block where PostgreSQL refuses it, which fails as PostgreSQL
 * would); InvalidOid otherwise.  A command that is refused must not stop
 * the worker.
 */
static Oid
database_to_vacate(Node *stmt, bool is_top_level)
{
	const char *name = NULL;
	bool		dropping = false;
	Oid			db;
	HeapTuple	tup;
	bool		is_template;

	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
			PreventInTransactionBlock(is_top_level, "DROP DATABASE");
			name = ((DropdbStmt *) stmt)->dbname;
			dropping = true;
			break;
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				name = ((RenameStmt *) stmt)->subname;
			break;
		case T_AlterDatabaseStmt:
			if (option_value(((AlterDatabaseStmt *) stmt)->options, "tablespace"))
			{
				PreventInTransactionBlock(is_top_level, "ALTER DATABASE SET TABLESPACE");
				name = ((AlterDatabaseStmt *) stmt)->dbname;
			}
			break;
		case T_CreatedbStmt:
			name = option_value(((CreatedbStmt *) stmt)->options, "template");
			if (name)
				PreventInTransactionBlock(is_top_level, "CREATE DATABASE");
			break;
		default:
			break;
	}
	if (name == NULL)
		return InvalidOid;
	db = get_database_oid(name, true);
	if (!OidIsValid(db) || db == MyDatabaseId ||
		!celloattr_database_ownercheck(db, GetUserId()))
		return InvalidOid;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(db));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	is_template = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return dropping && is_template ? InvalidOid : db;
}

/* However this backend's command ends: error, cancel, or the backend exiting. */
static void
withdraw_request(int code, Datum arg)
{
	celloattr_vacate_database_end();
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

/* Name the database in the vacating list; false when the list is full. */
static bool
add_request(Oid database)
{
	int			free_entry = -1;

	SpinLockAcquire(&celloattr_shared->mutex);
	for (int i = 0; i < CELLOATTR_MAX_VACATES && my_entry < 0; i++)
	{
		if (celloattr_shared->vacate_requests[i] > 0 &&
			celloattr_shared->vacating[i] == database)
			my_entry = i;
		else if (celloattr_shared->vacate_requests[i] == 0 && free_entry < 0)
			free_entry = i;
	}
	if (my_entry < 0 && free_entry >= 0)
	{
		my_entry = free_entry;
		celloattr_shared->vacating[free_entry] = database;
	}
	if (my_entry >= 0)
		celloattr_shared->vacate_requests[my_entry]++;
	SpinLockRelease(&celloattr_shared->mutex);
	return my_entry >= 0;
}

void
celloattr_vacate_database_begin(Node *stmt, bool is_top_level)
{
	static bool exit_callback_registered = false;
	Oid			database;

	if (celloattr_shared == NULL || my_entry >= 0)
		return;
	database = database_to_vacate(stmt, is_top_level);
	if (!OidIsValid(database))
		return;

	if (!exit_callback_registered)
	{
		before_shmem_exit(withdraw_request, 0);
		exit_callback_registered = true;
	}
	if (!add_request(database))
		return;
	celloattr_wake_worker_of(database);
	PG_TRY();
	{
		/* the launcher frees the slot once the worker has stopped */
		for (int waited = 0; waited < VACATE_WAIT_MS && worker_serves(database);
			 waited += 10)
		{
			CHECK_FOR_INTERRUPTS();
			pg_usleep(10000L);
		}
	}
	PG_CATCH();
	{
		/* cancelled while waiting: the command will not run */
		celloattr_vacate_database_end();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

void
celloattr_vacate_database_end(void)
{
	if (my_entry < 0)
		return;
	SpinLockAcquire(&celloattr_shared->mutex);
	celloattr_shared->vacate_requests[my_entry]--;
	SpinLockRelease(&celloattr_shared->mutex);
	my_entry = -1;
	/* the launcher looks at the databases again: once the command
	 * committed, or now if it failed */
	celloattr_poke_launcher(false);
	celloattr_poke_launcher_at_commit(false);
}
