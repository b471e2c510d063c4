/*-------------------------------------------------------------------------
 *
 * secrets.h
 *	  The secrets file between secrets_file.c, which reads and parses it,
 *	  and secrets.c, which keeps what the worker's database takes of it.
 *
 * Each function returns false after a LOG message naming the file and the
 * line; fallback is the detail saying what the worker does meanwhile.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_SECRETS_H
#define CELLOATTR_SECRETS_H

#include "postgres.h"

#include "celloattr.h"

/* What a parse keeps for this worker. */
typedef struct ParsedSecrets
{
	/* palloc'd values, NULL for keys not set; wiped by the caller */
	char	   *defaults[CELLOATTR_SECRET_KEYS];	/* before the first section */
	char	   *own[CELLOATTR_SECRET_KEYS]; /* the worker's database's section */
	bool		any_section;
	bool		own_section;
} ParsedSecrets;

/* Read the file, after its checks, into *text (palloc'd, to be wiped). */
extern bool secrets_read_file(const char *path, const char *fallback, char **text);

/*
 * Parse text (cut into lines in place) into *parsed, for the worker of
 * database dbname; the values parsed are in *parsed even after an error.
 */
extern bool secrets_parse(const char *path, char *text, const char *fallback,
						  const char *dbname, ParsedSecrets *parsed);

/* The section header of a database, as the file would spell it. */
extern char *secrets_section_label(const char *name);

#endif							/* CELLOATTR_SECRETS_H */
