/*-------------------------------------------------------------------------
 *
 * operator.c
 *	  celloattr.wait(): block until a repair is finished.
 *
 * The worker broadcasts a condition variable in shared memory each time it
 * records an outcome, so a waiting session wakes at once instead of polling
 * the table.  Each look at the row takes a fresh snapshot, which only READ
 * COMMITTED gives us.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "celloattr.h"

/* Without a worker to broadcast, look again this often. */
#define UNSHARED_POLL_MS 100
/* Look at the row at least this often even when nothing is broadcast. */
#define MAX_SLEEP_MS 1000

static SPIPlanPtr state_plan = NULL;

static bool
is_final(const char *state)
{
	return strcmp(state, "queued") != 0 && strcmp(state, "running") != 0;
}

/* The attribution's state now, in a fresh snapshot. */
static char *
current_state(int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	char	   *state;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "celloattr: SPI_connect failed");
	celloattr_prepare(&state_plan,
					  "SELECT state FROM celloattr.attributions WHERE id = $1",
					  1, types);
	/* not read-only: each look takes a fresh snapshot */
	if (SPI_execute_plan(state_plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "celloattr: reading the attribution failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("attribution %lld does not exist", (long long) id)));
	state = MemoryContextStrdup(CurTransactionContext,
								SPI_getvalue(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1));
	SPI_finish();
	return state;
}

static int64
interval_ms(const Interval *iv)
{
	int64		usecs = iv->time +
		((int64) iv->month * DAYS_PER_MONTH + iv->day) * USECS_PER_DAY;

	return usecs / 1000;
}

PG_FUNCTION_INFO_V1(cello_wait);
Datum
cello_wait(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	Interval   *timeout = PG_GETARG_INTERVAL_P(1);
	TimestampTz deadline;
	char	   *state;
	bool		shared = celloattr_shared != NULL;

	celloattr_check_sql_version();
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("celloattr.wait() cannot see progress in a %s transaction",
						IsolationIsSerializable() ? "SERIALIZABLE" : "REPEATABLE READ"),
				 errhint("Call it in a READ COMMITTED transaction.")));

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   interval_ms(timeout));

	/* get on the wait list before looking, or a broadcast could be missed */
	if (shared)
		ConditionVariablePrepareToSleep(&celloattr_shared->progress);
	for (;;)
	{
		long		remaining;

		state = current_state(id);
		if (is_final(state))
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		if (shared)
			ConditionVariableTimedSleep(&celloattr_shared->progress,
										Min(remaining, MAX_SLEEP_MS),
										PG_WAIT_EXTENSION);
		else
		{
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(remaining, UNSHARED_POLL_MS), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		CHECK_FOR_INTERRUPTS();
	}
	if (shared)
		ConditionVariableCancelSleep();

	PG_RETURN_TEXT_P(cstring_to_text(state));
}
