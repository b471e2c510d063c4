/*-------------------------------------------------------------------------
 *
 * postgres.h (fuzz shim)
 *	  Just enough of the backend for src/encode.c and src/json.c to run
 *	  outside a server: c.h, and palloc and friends from libpgcommon's
 *	  frontend memory routines (malloc that exits on failure).
 *
 * An elog(ERROR) in the fuzzed code would have been a clean error in the
 * worker; here it aborts, so the fuzzer reports it as a finding.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_FUZZ_POSTGRES_H
#define CELLOATTR_FUZZ_POSTGRES_H

#include "c.h"

#include <stdlib.h>

#include "common/fe_memutils.h"

#define ERROR 21
#define elog(level, ...) abort()

#endif
