/*-------------------------------------------------------------------------
 *
 * dbtext.h
 *	  Text crossing between the providers (UTF-8) and the database (its
 *	  own encoding): what the worker writes is always valid text.
 *
 * The backend functions need a transaction (the encoding conversions are
 * looked up in the catalog).  Every function passes NULL through.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_DBTEXT_H
#define CELLOATTR_DBTEXT_H

#include "postgres.h"

#include "http.h"

/*
 * Provider text (UTF-8, or bytes that should be) as valid text of the
 * database (palloc'd): invalid bytes and NUL as \xNN, characters its
 * encoding lacks as \u{XXXX}.
 */
extern char *db_text(const char *text);

/* The same for JSON text bound for a jsonb column: a valid JSON text that
 * jsonb takes (no \u0000; the escapes inside its strings). */
extern char *db_json(const char *json);

/* Text read from the database as the UTF-8 the worker sends providers. */
extern char *worker_text(const char *text);

/*
 * len bytes of provider text as the HTTP log keeps it: valid text, every
 * secret the worker holds redacted, and clipped at a character boundary to
 * at most limit bytes (-1: no limit) with "... [N bytes]" after it.
 */
extern char *log_text(const char *text, size_t len, int limit);

/* Text of the worker (an error message) as the database keeps it: valid,
 * secrets redacted, not clipped. */
extern char *scrubbed_text(const char *text);

#endif							/* CELLOATTR_DBTEXT_H */
