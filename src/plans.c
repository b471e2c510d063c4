/*-------------------------------------------------------------------------
 *
 * plans.c
 *	  Statements prepared once per process and run through SPI, shared by
 *	  the queueing functions and the worker, and the small conversions
 *	  around them.
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
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"

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

Datum
celloattr_text_datum(const char *s, char *null)
{
	*null = (s == NULL) ? 'n' : ' ';
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

int64
celloattr_first_int8(void)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  1, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

const char *
celloattr_text_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}
