/*-------------------------------------------------------------------------
 *
 * plans.c
 *	  Statements prepared once per process and run through SPI, shared by
 *	  the queueing functions and the worker.
 *
 * Plans are generic from the first execution: these statements run
 * thousands of times per second with parameters that never change the
 * best plan, and a custom plan would be planned again on every call.
 * The exception is a statement whose best plan depends on a parameter's
 * value (the worker's claim, LIMIT $1): it is planned for each call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "nodes/parsenodes.h"

#include "celloattr.h"

static SPIPlanPtr
keep(SPIPlanPtr *cache, const char *sql, int nargs, Oid *types, int options)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, options);

		if (plan == NULL)
			elog(ERROR, "celloattr: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*cache = plan;
	}
	return *cache;
}

SPIPlanPtr
celloattr_prepare(SPIPlanPtr *cache, const char *sql, int nargs, Oid *types)
{
	return keep(cache, sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
}

SPIPlanPtr
celloattr_prepare_replanned(SPIPlanPtr *cache, const char *sql, int nargs,
							Oid *types)
{
	return keep(cache, sql, nargs, types, 0);
}

int
celloattr_execute(SPIPlanPtr plan, Datum *values, const char *nulls,
				  int expected)
{
	int			rc = SPI_execute_plan(plan, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "celloattr: SPI_execute_plan returned %s",
			 SPI_result_code_string(rc));
	return (int) SPI_processed;
}
