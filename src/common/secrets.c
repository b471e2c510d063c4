/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  The provider secrets, read by the worker from the secrets file named
 *	  by celloattr.secrets_file, and nowhere else.
 *
 * Settings cannot hold secrets: GUC_SUPERUSER_ONLY still lets members of
 * pg_read_all_settings (pg_monitor, so most monitoring agents) read them,
 * and what ALTER DATABASE ... SET stores (pg_db_role_setting) every role
 * reads.  The file lives with the server's other keys (ssl_key_file),
 * relative to the data directory, with the same checks (secrets_file.c).
 * No SQL route reads it for a role that was not granted
 * pg_read_server_files.
 *
 * One cluster may serve several databases, each with its own provider
 * accounts: the keys before the file's first [database] line are every
 * worker's, and the keys of the section of a worker's own database
 * override them.  The worker looks its database's name up at each read.
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

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/memutils.h"

#include "celloattr.h"
#include "secrets.h"

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

/*
 * The name of the worker's database, in cxt (the current context, which
 * outlives the transaction); NULL after a LOG message.  Looked up at each
 * load, so that after ALTER DATABASE ... RENAME the next reload takes the
 * section of the new name.
 */
static char *
database_name(MemoryContext cxt, const char *fallback)
{
	char	   *name;

	Assert(!IsTransactionState());
	StartTransactionCommand();
	name = get_database_name(MyDatabaseId);
	if (name)
		name = MemoryContextStrdup(cxt, name);
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	if (name == NULL)
		ereport(LOG,
				(errcode(ERRCODE_UNDEFINED_DATABASE),
				 errmsg("celloattr worker could not find its database (OID %u) to choose its section of the secrets file",
						MyDatabaseId),
				 errdetail_internal("%s", fallback)));
	return name;
}

/*
 * Replace the secrets with values[], all or nothing; false (after a LOG
 * message) if memory ran out, the secrets then as they were.  The copies
 * are made outside memory contexts, so that each can be wiped when
 * replaced.
 */
static bool
install(char **values, const char *path, const char *fallback)
{
	char	   *copies[CELLOATTR_SECRET_KEYS] = {0};

	for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
	{
		if (values[k] == NULL || values[k][0] == '\0')
			continue;
		copies[k] = strdup(values[k]);
		if (copies[k] == NULL)
		{
			for (int j = 0; j < k; j++)
				if (copies[j])
					forget(&copies[j]);
			ereport(LOG,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory reading celloattr secrets file \"%s\"", path),
					 errdetail_internal("%s", fallback)));
			return false;
		}
	}
	for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
	{
		forget(secret_vars[k]);
		if (copies[k])
			*secret_vars[k] = copies[k];
	}
	return true;
}

/*
 * What the log says the load set: the keys, and which of them came from
 * the database's section, if the file has sections.
 */
static char *
loaded_keys(char **values, const ParsedSecrets *parsed, const char *dbname)
{
	StringInfoData set;
	StringInfoData own;

	initStringInfo(&set);
	initStringInfo(&own);
	for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
	{
		if (values[k] == NULL || values[k][0] == '\0')
			continue;
		appendStringInfo(&set, "%s%s", set.len ? ", " : "", celloattr_secret_keys[k]);
		if (values[k] == parsed->own[k])
			appendStringInfo(&own, "%s%s", own.len ? ", " : "", celloattr_secret_keys[k]);
	}
	if (set.len == 0)
		appendStringInfoString(&set, "no key set");
	if (own.len)
		appendStringInfo(&set, " (from section %s: %s)", secrets_section_label(dbname), own.data);
	else if (parsed->own_section)
		appendStringInfo(&set, " (section %s sets no key)", secrets_section_label(dbname));
	else if (parsed->any_section)
		appendStringInfo(&set, " (no section %s)", secrets_section_label(dbname));
	return set.data;
}

void
celloattr_secrets_load(void)
{
	const char *path = celloattr_secrets_file;
	const char *fallback = !secrets_ready
		? "The worker starts no step until it can read the file; fix it and reload."
		: "The worker keeps the secrets it read before.";
	ParsedSecrets parsed = {0};
	char	   *values[CELLOATTR_SECRET_KEYS];
	char	   *dbname;
	char	   *text = NULL;
	size_t		textlen;
	bool		ok;
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
	dbname = database_name(cxt, fallback);
	if (dbname == NULL || !secrets_read_file(path, fallback, &text))
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
		return;
	}
	textlen = strlen(text);		/* parsing cuts it into lines */
	ok = secrets_parse(path, text, fallback, dbname, &parsed);
	/* a key of the database's section, even '', overrides the default */
	for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
		values[k] = parsed.own[k] ? parsed.own[k] : parsed.defaults[k];
	ok = ok && install(values, path, fallback);
	if (ok)
	{
		secrets_ready = true;
		ereport(LOG,
				(errmsg("celloattr worker read secrets file \"%s\": %s", path,
						loaded_keys(values, &parsed, dbname))));
	}
	for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
	{
		if (parsed.defaults[k])
			explicit_bzero(parsed.defaults[k], strlen(parsed.defaults[k]));
		if (parsed.own[k])
			explicit_bzero(parsed.own[k], strlen(parsed.own[k]));
	}
	explicit_bzero(text, textlen);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}
