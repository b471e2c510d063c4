/*-------------------------------------------------------------------------
 *
 * providers.h (fuzz shim)
 *	  The encoders' part of src/providers.h, without the worker's job
 *	  machinery that the fuzz target does not link.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_FUZZ_PROVIDERS_H
#define CELLOATTR_FUZZ_PROVIDERS_H

#include "lib/stringinfo.h"

extern void form_append(StringInfo buf, const char *name, const char *value);
extern void url_append_escaped(StringInfo buf, const char *value);
extern char *url_escape(const char *value);
extern char *base_url(const char *setting);

#endif
