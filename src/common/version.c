/*-------------------------------------------------------------------------
 *
 * version.c
 *	  The SQL versions of celloattr this library knows, checked against
 *	  pg_extension.extversion before the library touches the extension's
 *	  objects.
 *
 * A binary upgraded before ALTER EXTENSION celloattr UPDATE runs meets the
 * older SQL objects; a binary downgraded meets newer ones.  The worker runs
 * steps only on the objects of its own version (CELLOATTR_VERSION): on any
 * other it claims nothing, logs once why and what to do, and checks again
 * every poll interval, so queued work waits instead of failing.  The SQL
 * functions queue on the versions listed below (an older one warns that
 * the worker waits for the update) and refuse any other with an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#include "celloattr.h"

/* Every SQL version whose objects this library's SQL functions work with. */
static const char *const known_versions[] = {"1.0", CELLOATTR_VERSION};

/* The version the worker last logged about: logged once, until it changes. */
static char logged_version[64] = "";

bool		celloattr_extension_missing = false;

/* This transaction found a version the functions work with. */
static bool checked_in_xact = false;

/* pg_extension.extversion of celloattr, or NULL when not installed. */
static char *
sql_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("celloattr"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

static bool
is_known(const char *version)
{
	for (size_t i = 0; i < lengthof(known_versions); i++)
		if (strcmp(version, known_versions[i]) == 0)
			return true;
	return false;
}

/*
 * Whether the worker may use the extension's objects (in a transaction):
 * installed, at the library's own version.  Otherwise false, and on the
 * first round that meets a version, a warning says why and what to do.
 */
bool
celloattr_worker_may_run(void)
{
	char	   *version = sql_version();

	celloattr_extension_missing = version == NULL;
	if (version == NULL)
		return false;
	if (strcmp(version, CELLOATTR_VERSION) == 0)
	{
		logged_version[0] = '\0';
		return true;
	}
	if (strcmp(version, logged_version) != 0)
	{
		strlcpy(logged_version, version, sizeof(logged_version));
		if (is_known(version))
			ereport(WARNING,
					(errmsg("celloattr worker is waiting: the extension's SQL objects are at version %s, and this library runs version %s",
							version, CELLOATTR_VERSION),
					 errdetail("Queued repairs stay queued until the objects are updated."),
					 errhint("Run ALTER EXTENSION celloattr UPDATE in database \"%s\".",
							 get_database_name(MyDatabaseId))));
		else
			ereport(WARNING,
					(errmsg("celloattr worker is waiting: the extension's SQL objects are at version %s, which this library (version %s) does not know",
							version, CELLOATTR_VERSION),
					 errdetail("Queued repairs stay queued until the library and the objects match."),
					 errhint("Install the celloattr library that version %s came with, or run ALTER EXTENSION celloattr UPDATE if this library is the newer one.",
							 version)));
	}
	return false;
}

static void
version_xact_callback(XactEvent event, void *arg)
{
	checked_in_xact = false;
}

/*
 * Called by every SQL-callable function of the library before it touches
 * the extension's objects: an error on a version it does not know, a
 * warning (once per transaction) on an older one the worker waits on.
 */
void
celloattr_check_sql_version(void)
{
	char	   *version;

	if (checked_in_xact)
		return;
	version = sql_version();
	if (version == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"celloattr\" is not installed in this database")));
	if (!is_known(version))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the SQL objects of celloattr are at version %s, which this library (version %s) does not know",
						version, CELLOATTR_VERSION),
				 errhint("Run ALTER EXTENSION celloattr UPDATE if this library is the newer one; otherwise install the celloattr library that version %s came with.",
						 version)));
	if (strcmp(version, CELLOATTR_VERSION) != 0)
		ereport(WARNING,
				(errmsg("the SQL objects of celloattr are at version %s, and this library runs version %s: the worker carries out no repair until they are updated",
						version, CELLOATTR_VERSION),
				 errdetail("The repair is recorded and stays queued."),
				 errhint("Run ALTER EXTENSION celloattr UPDATE.")));
	checked_in_xact = true;
}

void
celloattr_version_init(void)
{
	RegisterXactCallback(version_xact_callback, NULL);
}
