/*-------------------------------------------------------------------------
 *
 * dbsettings.c
 *	  Whether the celloattr.* settings of the worker's database (ALTER
 *	  DATABASE ... SET) changed since the worker connected.
 *
 * A database whose repairs go to other provider accounts than the
 * cluster's has its own celloattr.* settings (guc.c).  PostgreSQL applies
 * them to a session as it connects, and never again: a reload re-reads the
 * configuration files only.  So the worker remembers what they were when
 * it connected, compares on each reload, and when they changed starts
 * afresh (worker.c: it stops as on a shutdown, letting its transfers
 * finish, and the launcher starts it again a second later), so that
 * ALTER DATABASE ... SET followed by SELECT pg_reload_conf() takes effect
 * as ALTER SYSTEM does.  Only the rows PostgreSQL applied to the worker
 * count: the database's own, those of the role it connects as, and those
 * of every role (ALTER ROLE ALL).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_db_role_setting.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "worker.h"

/* The celloattr.* entries as the worker connected with them. */
static char *connected_with = NULL;

/* The celloattr.* entries of one (database, role) row, onto buf. */
static void
append_entries(StringInfo buf, Relation rel, Oid database, Oid role)
{
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;

	ScanKeyInit(&keys[0], Anum_pg_db_role_setting_setdatabase,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(database));
	ScanKeyInit(&keys[1], Anum_pg_db_role_setting_setrole,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(role));
	scan = systable_beginscan(rel, DbRoleSettingDatidRolidIndexId, true,
							  NULL, 2, keys);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		config = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
										  RelationGetDescr(rel), &isnull);
		Datum	   *items;
		int			n;

		if (isnull)
			continue;
		deconstruct_array(DatumGetArrayTypeP(config), TEXTOID, -1, false,
						  TYPALIGN_INT, &items, NULL, &n);
		for (int i = 0; i < n; i++)
		{
			char	   *item = TextDatumGetCString(items[i]);

			if (strncmp(item, "celloattr.", strlen("celloattr.")) == 0)
				appendStringInfo(buf, "%u/%u %s\n", database, role, item);
		}
	}
	systable_endscan(scan);
}

/* The entries that apply to the worker now (in a transaction of its own). */
static char *
current_entries(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	StringInfoData buf;
	Relation	rel;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	initStringInfo(&buf);
	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	/* as PostgreSQL's process_settings applies them */
	append_entries(&buf, rel, MyDatabaseId, BOOTSTRAP_SUPERUSERID);
	append_entries(&buf, rel, InvalidOid, BOOTSTRAP_SUPERUSERID);
	append_entries(&buf, rel, MyDatabaseId, InvalidOid);
	append_entries(&buf, rel, InvalidOid, InvalidOid);	/* ALTER ROLE ALL */
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	MemoryContextSwitchTo(cxt);
	buf.data = MemoryContextStrdup(TopMemoryContext, buf.data);
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return buf.data;
}

void
worker_remember_database_settings(void)
{
	connected_with = current_entries();
}

bool
worker_database_settings_changed(void)
{
	char	   *now = current_entries();
	bool		changed = strcmp(now, connected_with) != 0;

	pfree(now);
	return changed;
}
