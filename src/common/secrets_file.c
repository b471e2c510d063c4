/*-------------------------------------------------------------------------
 *
 * secrets_file.c
 *	  Reading and parsing the secrets file, for the worker (secrets.c).
 *
 * The file is checked as PostgreSQL checks ssl_key_file: a regular file
 * owned by the server's OS user (mode 0600 or less) or by root (0640 or
 * less), checked on the descriptor read.  Its lines are key = 'value', a
 * comment or empty; a line [database] (or ["database"]) starts the keys of
 * one database, those before the first such line being every database's.
 * Messages name the file, the line and the key, never a value, and every
 * copy of a value made here is wiped.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/fd.h"

#include "celloattr.h"
#include "secrets.h"

/* A secrets file is a handful of lines; more is a wrong file. */
#define SECRETS_FILE_MAX 65536

/* The keys of the file, for a message. */
static char *
key_list(void)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < CELLOATTR_SECRET_KEYS; i++)
		appendStringInfo(&buf, "%s%s", i ? ", " : "", celloattr_secret_keys[i]);
	return buf.data;
}

/*
 * Read the file into *text; false after a LOG message.  The checks are
 * made on the descriptor opened, so the file checked is the file read.
 */
bool
secrets_read_file(const char *path, const char *fallback, char **text)
{
	struct stat st;
	int			fd;
	ssize_t		got;
	char	   *buf;

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not open celloattr secrets file \"%s\": %m", path),
				 errdetail_internal("%s", fallback),
				 errhint("Write the provider keys to it (one key = 'value' a line, mode 0600, owned by the server's user) and reload, or set celloattr.secrets_file = '' to run without them.")));
		return false;
	}
	if (fstat(fd, &st) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not stat celloattr secrets file \"%s\": %m", path),
				 errdetail_internal("%s", fallback)));
		CloseTransientFile(fd);
		return false;
	}
	if (!S_ISREG(st.st_mode))
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("celloattr secrets file \"%s\" is not a regular file", path),
				 errdetail_internal("%s", fallback)));
		CloseTransientFile(fd);
		return false;
	}
	/* the same rules as PostgreSQL's for ssl_key_file */
	if (st.st_uid != geteuid() && st.st_uid != 0)
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("celloattr secrets file \"%s\" must be owned by the database system user or root", path),
				 errdetail_internal("%s", fallback)));
		CloseTransientFile(fd);
		return false;
	}
	if ((st.st_uid == geteuid() && (st.st_mode & (S_IRWXG | S_IRWXO))) ||
		(st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))))
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("celloattr secrets file \"%s\" has group or world access", path),
				 errdetail("%s File must have permissions u=rw (0600) or less if owned by the database system user, or permissions u=rw,g=r (0640) or less if owned by root.",
						   fallback)));
		CloseTransientFile(fd);
		return false;
	}
	if (st.st_size > SECRETS_FILE_MAX)
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("celloattr secrets file \"%s\" is larger than %d bytes", path,
						SECRETS_FILE_MAX),
				 errdetail_internal("%s", fallback)));
		CloseTransientFile(fd);
		return false;
	}

	buf = palloc(st.st_size + 1);
	got = read(fd, buf, st.st_size);
	if (got < 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not read celloattr secrets file \"%s\": %m", path),
				 errdetail_internal("%s", fallback)));
		CloseTransientFile(fd);
		pfree(buf);
		return false;
	}
	CloseTransientFile(fd);
	if (memchr(buf, '\0', got) != NULL)
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("celloattr secrets file \"%s\" holds a zero byte: it is not a text file", path),
				 errdetail_internal("%s", fallback)));
		explicit_bzero(buf, got);
		return false;
	}
	buf[got] = '\0';
	*text = buf;
	return true;
}

static void
syntax_error(const char *path, int line, const char *what, const char *fallback)
{
	ereport(LOG,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("syntax error in celloattr secrets file \"%s\", line %d: %s",
					path, line, what),
			 errdetail("%s Each line is key = 'value' (a quote inside the value doubled), [database] to start the keys of one database ([\"database\"] for a name with blanks, brackets, # or \" in it, a \" doubled), a # comment, or empty.",
					   fallback)));
}

static inline bool
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* A character that ends a database name written without quotes. */
static inline bool
ends_bare_name(char c)
{
	return c == '\0' || is_blank(c) || c == '[' || c == ']' || c == '#' || c == '"';
}

char *
secrets_section_label(const char *name)
{
	StringInfoData buf;
	bool		quote = false;

	for (const char *c = name; *c; c++)
		quote |= ends_bare_name(*c);
	if (!quote)
		return psprintf("[%s]", name);
	initStringInfo(&buf);
	appendStringInfoString(&buf, "[\"");
	for (const char *c = name; *c; c++)
	{
		if (*c == '"')
			appendStringInfoChar(&buf, '"');
		appendStringInfoChar(&buf, *c);
	}
	appendStringInfoString(&buf, "\"]");
	return buf.data;
}

/*
 * Parse the section header at p (its '['): [name] or ["name"], a quote
 * inside doubled.  *name is palloc'd; false after a LOG message.
 */
static bool
parse_header(const char *path, int lineno, const char *p, const char *fallback,
			 char **name)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (p++; is_blank(*p); p++)
		;
	if (*p == '"')
	{
		for (p++;; p++)
		{
			if (*p == '\0')
			{
				syntax_error(path, lineno, "unterminated quoted database name", fallback);
				return false;
			}
			if (*p == '"' && p[1] == '"')
				p++;
			else if (*p == '"')
				break;
			appendStringInfoChar(&buf, *p);
		}
		p++;
	}
	else
		while (!ends_bare_name(*p))
			appendStringInfoChar(&buf, *p++);
	while (is_blank(*p))
		p++;
	if (buf.len == 0)
	{
		syntax_error(path, lineno, "expected a database name after [", fallback);
		return false;
	}
	if (*p != ']')
	{
		syntax_error(path, lineno, "expected ] after the database name", fallback);
		return false;
	}
	for (p++; is_blank(*p); p++)
		;
	if (*p != '\0' && *p != '#')
	{
		syntax_error(path, lineno, "unexpected text after the section header", fallback);
		return false;
	}
	/* no database has a longer name: the section could never be used */
	if (buf.len >= NAMEDATALEN)
	{
		syntax_error(path, lineno,
					 psprintf("the database name is longer than %d bytes", NAMEDATALEN - 1),
					 fallback);
		return false;
	}
	*name = buf.data;
	return true;
}

/*
 * Parse the value at p, to the end of the line, into out: room for the
 * rest of the line, zeroed, so that it never moves (leaving a copy no one
 * wipes) and what was parsed before an error is wiped with it.
 */
static bool
parse_value(const char *path, int lineno, const char *p, const char *fallback,
			char *out)
{
	char	   *o = out;

	if (*p == '\'')
	{
		for (p++;; p++)
		{
			if (*p == '\0')
			{
				syntax_error(path, lineno, "unterminated quoted value", fallback);
				return false;
			}
			if (*p == '\'' && p[1] == '\'')
				p++;
			else if (*p == '\'')
				break;
			*o++ = *p;
		}
		p++;
	}
	else
		while (*p && !is_blank(*p) && *p != '#')
			*o++ = *p++;
	while (is_blank(*p))
		p++;
	if (*p != '\0' && *p != '#')
	{
		syntax_error(path, lineno, "unexpected text after the value", fallback);
		return false;
	}
	/* a value goes into HTTP headers and bodies: no control characters */
	for (o = out; *o; o++)
		if ((unsigned char) *o < 0x20 || *o == 0x7f)
		{
			syntax_error(path, lineno, "the value holds a control character", fallback);
			return false;
		}
	return true;
}

/* A section header seen, to refuse a second one for the same database. */
typedef struct SectionSeen
{
	char	   *name;
	int			line;
} SectionSeen;

/*
 * Parse the file's text into *parsed, for the worker of database dbname;
 * false after a LOG message.  Other databases' sections are checked as
 * strictly, then dropped: a file with a mistake anywhere is refused by
 * every worker, so that it is noticed at once.  A key not in the list is
 * not named in the message: a line holding only a value would be taken
 * for one.
 */
bool
secrets_parse(const char *path, char *text, const char *fallback,
			  const char *dbname, ParsedSecrets *parsed)
{
	int			lines[CELLOATTR_SECRET_KEYS] = {0};	/* of the current section */
	char	  **section = parsed->defaults; /* NULL: another database's */
	List	   *seen = NIL;
	int			lineno = 0;
	char	   *p = text;

	while (*p)
	{
		char	   *eol = strchr(p, '\n');
		char	   *key;
		size_t		keylen;
		size_t		room;
		char	   *value;
		bool		ok;
		int			k;

		lineno++;
		if (eol)
			*eol = '\0';
		while (is_blank(*p))
			p++;
		if (*p == '\0' || *p == '#')
			goto next;

		if (*p == '[')
		{
			SectionSeen *s = palloc(sizeof(SectionSeen));
			ListCell   *lc;

			if (!parse_header(path, lineno, p, fallback, &s->name))
				return false;
			foreach(lc, seen)
			{
				SectionSeen *before = lfirst(lc);

				if (strcmp(before->name, s->name) == 0)
				{
					ereport(LOG,
							(errcode(ERRCODE_CONFIG_FILE_ERROR),
							 errmsg("section %s is given twice in celloattr secrets file \"%s\", lines %d and %d",
									secrets_section_label(s->name), path, before->line, lineno),
							 errdetail("%s Each database has at most one section.", fallback)));
					return false;
				}
			}
			s->line = lineno;
			seen = lappend(seen, s);
			memset(lines, 0, sizeof(lines));
			parsed->any_section = true;
			section = NULL;
			if (strcmp(s->name, dbname) == 0)
			{
				parsed->own_section = true;
				section = parsed->own;
			}
			goto next;
		}

		key = p;
		while (*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			   (*p >= '0' && *p <= '9'))
			p++;
		keylen = p - key;
		while (is_blank(*p))
			p++;
		if (keylen == 0 || *p != '=')
		{
			syntax_error(path, lineno, "expected key = 'value'", fallback);
			return false;
		}
		for (k = 0; k < CELLOATTR_SECRET_KEYS; k++)
			if (strlen(celloattr_secret_keys[k]) == keylen &&
				strncmp(celloattr_secret_keys[k], key, keylen) == 0)
				break;
		if (k == CELLOATTR_SECRET_KEYS)
		{
			ereport(LOG,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("unrecognized key in celloattr secrets file \"%s\", line %d",
							path, lineno),
					 errdetail("%s The keys are %s.", fallback, key_list())));
			return false;
		}
		if (lines[k])
		{
			ereport(LOG,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("key \"%s\" is set twice in celloattr secrets file \"%s\", lines %d and %d",
							celloattr_secret_keys[k], path, lines[k], lineno),
					 errdetail_internal("%s", fallback)));
			return false;
		}
		lines[k] = lineno;

		for (p++; is_blank(*p); p++)	/* past the '=' */
			;
		room = strlen(p) + 1;
		value = palloc0(room);
		ok = parse_value(path, lineno, p, fallback, value);
		if (section)
			section[k] = value; /* wiped by the caller, even after an error */
		else
		{
			explicit_bzero(value, room);
			pfree(value);
		}
		if (!ok)
			return false;
next:
		if (eol == NULL)
			break;
		p = eol + 1;
	}
	return true;
}
