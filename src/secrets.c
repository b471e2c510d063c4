/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  The provider secrets, read by the worker from the secrets file named
 *	  by celloattr.secrets_file, and nowhere else.
 *
 * Settings cannot hold secrets: GUC_SUPERUSER_ONLY still lets members of
 * pg_read_all_settings (pg_monitor, so most monitoring agents) read them.
 * The file lives with the server's other keys (ssl_key_file), relative to
 * the data directory, and gets the same checks: a regular file owned by
 * the server's OS user (mode 0600 or less) or by root (0640 or less).  No
 * SQL route reads it for a role that was not granted pg_read_server_files.
 *
 * Only the worker reads it, when it starts and on each SIGHUP.  A worker
 * that could never read it starts no step (celloattr_secrets_ready), so a
 * mistake in the file delays repairs instead of failing them; a failed
 * re-read keeps the secrets read before, as a failed reload of the SSL
 * files keeps the previous ones.  Messages name the file, the line and
 * the key, never a value.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/stringinfo.h"
#include "storage/fd.h"
#include "utils/memutils.h"

#include "celloattr.h"

/* A secrets file is a handful of lines; more is a wrong file. */
#define SECRETS_FILE_MAX 65536

char	   *celloattr_secrets_file = NULL;
char	   *celloattr_stripe_secret_key = "";
char	   *celloattr_chargebee_api_key = "";
char	   *celloattr_chargebee_webhook_username = "";
char	   *celloattr_chargebee_webhook_password = "";
char	   *celloattr_cello_access_key_id = "";
char	   *celloattr_cello_secret_access_key = "";

/* Every key of the file, and the variable it sets. */
const char *const celloattr_secret_keys[CELLOATTR_SECRET_KEYS] = {
	"stripe_secret_key",
	"chargebee_api_key",
	"chargebee_webhook_username",
	"chargebee_webhook_password",
	"cello_access_key_id",
	"cello_secret_access_key",
};

static char **const secret_vars[CELLOATTR_SECRET_KEYS] = {
	&celloattr_stripe_secret_key,
	&celloattr_chargebee_api_key,
	&celloattr_chargebee_webhook_username,
	&celloattr_chargebee_webhook_password,
	&celloattr_cello_access_key_id,
	&celloattr_cello_secret_access_key,
};

/* The worker has read a secrets file (or runs without one on purpose). */
static bool secrets_ready = false;

bool
celloattr_secrets_ready(void)
{
	return secrets_ready;
}

static void
forget(char **var)
{
	if ((*var)[0] != '\0')
	{
		explicit_bzero(*var, strlen(*var));
		free(*var);
	}
	*var = "";
}

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
static bool
read_secrets_file(const char *path, const char *fallback, char **text)
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
			 errdetail("%s Each line is key = 'value' (a quote inside the value doubled), a # comment, or empty.",
					   fallback)));
}

static inline bool
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/*
 * Parse the file's text into values[] (palloc'd, NULL for keys it does not
 * set); false after a LOG message.  A key not in the list is not named in
 * the message: a line holding only a value would be taken for one.
 */
static bool
parse_secrets(const char *path, char *text, const char *fallback,
			  char **values)
{
	int			lines[CELLOATTR_SECRET_KEYS] = {0};
	int			lineno = 0;
	char	   *p = text;

	while (*p)
	{
		char	   *eol = strchr(p, '\n');
		char	   *key;
		size_t		keylen;
		StringInfoData value;
		int			k;

		lineno++;
		if (eol)
			*eol = '\0';
		while (is_blank(*p))
			p++;
		if (*p == '\0' || *p == '#')
			goto next;

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

		p++;					/* the '=' */
		while (is_blank(*p))
			p++;
		initStringInfo(&value);
		values[k] = value.data;	/* wiped by the caller, even after an error */
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
				appendStringInfoChar(&value, *p);
			}
			p++;
		}
		else
			while (*p && !is_blank(*p) && *p != '#')
				appendStringInfoChar(&value, *p++);
		while (is_blank(*p))
			p++;
		if (*p != '\0' && *p != '#')
		{
			syntax_error(path, lineno, "unexpected text after the value", fallback);
			return false;
		}
		/* a value goes into HTTP headers and bodies: no control characters */
		values[k] = value.data;
		for (int i = 0; i < value.len; i++)
			if ((unsigned char) value.data[i] < 0x20 || value.data[i] == 0x7f)
			{
				syntax_error(path, lineno, "the value holds a control character", fallback);
				return false;
			}
next:
		if (eol == NULL)
			break;
		p = eol + 1;
	}
	return true;
}

void
celloattr_secrets_load(void)
{
	const char *path = celloattr_secrets_file;
	const char *fallback = !secrets_ready
		? "The worker starts no step until it can read the file; fix it and reload."
		: "The worker keeps the secrets it read before.";
	char	   *values[CELLOATTR_SECRET_KEYS] = {0};
	char	   *text = NULL;
	size_t		textlen;
	bool		parsed;
	StringInfoData set;
	MemoryContext cxt;
	MemoryContext old;

	if (path == NULL || path[0] == '\0')
	{
		for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
			forget(secret_vars[k]);
		ereport(LOG,
				(errmsg("celloattr worker runs without provider secrets: celloattr.secrets_file is empty")));
		secrets_ready = true;
		return;
	}
	/* what is read here is wiped and freed whatever happens */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "celloattr secrets",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	if (!read_secrets_file(path, fallback, &text))
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
		return;
	}
	textlen = strlen(text);		/* parsing cuts it into lines */
	parsed = parse_secrets(path, text, fallback, values);
	initStringInfo(&set);
	for (int k = 0; parsed && k < CELLOATTR_SECRET_KEYS; k++)
	{
		forget(secret_vars[k]);
		if (values[k] && values[k][0])
		{
			/* outside memory contexts, so that it can be wiped when replaced */
			char	   *copy = strdup(values[k]);

			if (copy == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OUT_OF_MEMORY),
						 errmsg("out of memory")));
			*secret_vars[k] = copy;
			appendStringInfo(&set, "%s%s", set.len ? ", " : "", celloattr_secret_keys[k]);
		}
	}
	for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
		if (values[k])
			explicit_bzero(values[k], strlen(values[k]));
	explicit_bzero(text, textlen);
	if (parsed)
	{
		secrets_ready = true;
		ereport(LOG,
				(errmsg("celloattr worker read secrets file \"%s\": %s", path,
						set.len ? set.data : "no key set")));
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}
