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
 * A statement may take a batch of rows at once, each column as an array
 * parameter that unnest() turns back into rows: one execution, whatever
 * the number of rows (ArrayColumn).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

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

void
celloattr_columns_init(ArrayColumn *cols, const Oid *types, int ncols, int cap)
{
	for (int i = 0; i < ncols; i++)
	{
		cols[i].type = types[i];
		cols[i].n = 0;
		cols[i].cap = Max(cap, 4);
		cols[i].values = palloc(cols[i].cap * sizeof(Datum));
		cols[i].nulls = palloc(cols[i].cap * sizeof(bool));
	}
}

void
celloattr_column_add(ArrayColumn *c, Datum value, bool isnull)
{
	if (c->n == c->cap)
	{
		c->cap *= 2;
		c->values = repalloc(c->values, c->cap * sizeof(Datum));
		c->nulls = repalloc(c->nulls, c->cap * sizeof(bool));
	}
	c->values[c->n] = value;
	c->nulls[c->n] = isnull;
	c->n++;
}

void
celloattr_column_text(ArrayColumn *c, const char *s)
{
	celloattr_column_add(c, s ? CStringGetTextDatum(s) : (Datum) 0, s == NULL);
}

void
celloattr_column_params(ArrayColumn *cols, int ncols, Oid *types, Datum *values)
{
	for (int i = 0; i < ncols; i++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;
		int			dims[1] = {cols[i].n};
		int			lbs[1] = {1};

		get_typlenbyvalalign(cols[i].type, &typlen, &typbyval, &typalign);
		types[i] = get_array_type(cols[i].type);
		values[i] = PointerGetDatum(construct_md_array(cols[i].values, cols[i].nulls,
													   1, dims, lbs, cols[i].type,
													   typlen, typbyval, typalign));
	}
}

int
celloattr_execute_columns(SPIPlanPtr *cache, const char *sql,
						  ArrayColumn *cols, int ncols, int expected)
{
	Oid			types[ARRAY_COLUMNS_MAX];
	Datum		values[ARRAY_COLUMNS_MAX];

	if (ncols > ARRAY_COLUMNS_MAX)
		elog(ERROR, "celloattr: %d array parameters, at most %d", ncols, ARRAY_COLUMNS_MAX);
	celloattr_column_params(cols, ncols, types, values);
	return celloattr_execute(celloattr_prepare(cache, sql, ncols, types),
							 values, NULL, expected);
}

Datum
celloattr_text_datum(const char *s, char *null)
{
	*null = (s == NULL) ? 'n' : ' ';
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

int64 *
celloattr_result_int8s(MemoryContext cxt, int *n)
{
	int64	   *values = MemoryContextAlloc(cxt, Max(SPI_processed, 1) * sizeof(int64));
	bool		isnull;

	for (uint64 i = 0; i < SPI_processed; i++)
		values[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												SPI_tuptable->tupdesc, 1, &isnull));
	*n = (int) SPI_processed;
	return values;
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
