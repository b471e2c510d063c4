/*-------------------------------------------------------------------------
 *
 * batch.c
 *	  The request batch an attribution belongs to (attributions.batch, by
 *	  which celloattr.progress counts): the client statement that queued
 *	  it, in its transaction.
 *
 * A repair query over many users, a COPY into a table with the attribute
 * trigger, or one call of the application is one batch.  It is named by
 * the id of the first attribution the statement queued, so it costs no
 * lookup and sorts as the statements came.  The batch is known by the
 * local transaction and the statement's start: the functions a statement
 * calls, and their own statements, share it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "storage/proc.h"
#include "utils/lsyscache.h"

#include "celloattr.h"

static LocalTransactionId batch_lxid = InvalidLocalTransactionId;
static TimestampTz batch_statement_start = 0;
static int64 batch_id = 0;

int64
celloattr_statement_batch(void)
{
	if (celloattr_my_lxid() != batch_lxid ||
		GetCurrentStatementStartTimestamp() != batch_statement_start)
		return 0;
	return batch_id;
}

int64
celloattr_join_batch(int64 id)
{
	if (celloattr_statement_batch() == 0)
	{
		batch_lxid = celloattr_my_lxid();
		batch_statement_start = GetCurrentStatementStartTimestamp();
		batch_id = id;
	}
	return batch_id;
}

/*
 * Whether celloattr.attributions has the batch column: the SQL objects of
 * 1.0, which the functions still queue into until ALTER EXTENSION ...
 * UPDATE (version.c), lack it.
 */
bool
celloattr_attributions_have_batch(void)
{
	Oid			schema = get_namespace_oid("celloattr", true);
	Oid			rel = OidIsValid(schema) ?
		get_relname_relid("attributions", schema) : InvalidOid;

	return OidIsValid(rel) && get_attnum(rel, "batch") != InvalidAttrNumber;
}
