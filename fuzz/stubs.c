/*-------------------------------------------------------------------------
 *
 * stubs.c
 *	  The few backend functions src/common/encode.c and src/common/json.c link against
 *	  that libpgcommon and libpgport (the frontend libraries the fuzz target
 *	  links) do not provide.
 *
 * An error report in the fuzzed code would have been a clean ERROR in the
 * worker; here it aborts, so the fuzzer reports it as a finding.  The time
 * formatting is not fuzzed: reaching it is a finding too.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>

#include "pgtime.h"
#include "utils/timestamp.h"

bool
errstart_cold(int elevel, const char *domain)
{
	if (elevel >= ERROR)
		abort();
	return false;
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	abort();
}

int
errmsg_internal(const char *fmt,...)
{
	abort();
}

pg_time_t
timestamptz_to_time_t(TimestampTz t)
{
	abort();
}

struct pg_tm *
pg_gmtime(const pg_time_t *timep)
{
	abort();
}

size_t
pg_strftime(char *s, size_t max, const char *format, const struct pg_tm *tm)
{
	abort();
}
