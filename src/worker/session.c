/*-------------------------------------------------------------------------
 *
 * session.c
 *	  The worker's session settings, pinned against everything a database
 *	  owner (or anyone who can set a parameter) could plant.
 *
 * The worker runs as the bootstrap superuser in a database that is not
 * ours.  Whoever owns that database can ALTER DATABASE ... SET any user
 * parameter, and postgresql.conf or ALTER ROLE can set the others; each
 * would apply to the worker's session when it connects.  A search_path that
 * puts a schema the owner can write before pg_catalog would run the owner's
 * now() or = as superuser; a lock_timeout or statement_timeout would turn
 * the worker's transactions into errors; read-only, serializable or replica
 * defaults would change what its statements do.
 *
 * So right after connecting, and again after each reload of the
 * configuration, the worker sets each of them at PGC_S_OVERRIDE, the
 * highest source: no database, role or file setting can take its place,
 * and a reload (PGC_S_FILE) leaves it alone.  The worker's statements also
 * name their functions with pg_catalog (queue.c, record.c, retention.c);
 * operators and type names are resolved through this search_path, which
 * puts pg_catalog first and pg_temp last, so no other schema is searched
 * before them.
 *
 * Who the worker is, and what an ERROR does to it, are settings too: an
 * owner's ALTER DATABASE ... SET role (or session_authorization) would run
 * the worker as the owner's role, which can neither read nor write the
 * extension's tables and may terminate the worker, and exit_on_error would
 * turn every ERROR the worker recovers from into an exit, and a restart
 * that sends its steps in flight again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "worker.h"

typedef struct Pinned
{
	const char *name;
	const char *value;
} Pinned;

static const Pinned pinned[] = {
	/* nothing but the system catalogs resolves a name; temp objects last */
	{"search_path", "pg_catalog, pg_temp"},

	/*
	 * Row locks the worker might meet are taken with SKIP LOCKED and table
	 * locks conditionally; this bounds any other wait (a unique index
	 * check, a foreign key) so that the worker never waits long on an
	 * application and notices SIGTERM.  What times out is kept and tried
	 * again (record.c's lock conflicts).
	 */
	{"lock_timeout", WORKER_LOCK_TIMEOUT},
	{"statement_timeout", "0"},
	{"idle_in_transaction_session_timeout", "0"},
	{"idle_session_timeout", "0"},

	/* an ERROR is caught and recovered from (worker.c), never an exit */
	{"exit_on_error", "off"},

	/* the worker's statements are written for read committed, read-write */
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_read_only", "off"},
	{"transaction_read_only", "off"},
	{"default_transaction_deferrable", "off"},

	/* replica would silence the foreign keys and the wake-up trigger */
	{"session_replication_role", "origin"},
	{"row_security", "on"},

	/* how its statements are planned and their values read */
	{"plan_cache_mode", "auto"},
	{"jit", "off"},
	{"transform_null_equals", "off"},
	{"standard_conforming_strings", "on"},
	{"DateStyle", "ISO, MDY"},
	{"IntervalStyle", "postgres"},
	{"extra_float_digits", "1"},
	{"check_function_bodies", "on"},
};

/*
 * The worker is the bootstrap superuser, whatever the database's or a
 * role's settings name: session_authorization takes a role's name, which
 * only a transaction can look up, and role 'none' then makes the session
 * user the current one.
 */
static void
pin_identity(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	SetConfigOption("session_authorization",
					GetUserNameFromId(BOOTSTRAP_SUPERUSERID, false),
					PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("role", "none", PGC_SUSET, PGC_S_OVERRIDE);
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
}

void
worker_pin_settings(void)
{
	pin_identity();
	for (int i = 0; i < (int) lengthof(pinned); i++)
		SetConfigOption(pinned[i].name, pinned[i].value, PGC_SUSET, PGC_S_OVERRIDE);
}

/* The name of the worker's database, for its messages (TopMemoryContext). */
char *
worker_database_name(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *name;

	StartTransactionCommand();
	name = MemoryContextStrdup(TopMemoryContext, get_database_name(MyDatabaseId));
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return name;
}
