/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Every celloattr.* setting, defined in one place.
 *
 * No setting holds a secret: members of pg_read_all_settings (pg_monitor)
 * read even GUC_SUPERUSER_ONLY ones.  The keys are in the secrets file that
 * celloattr.secrets_file names (secrets.c).  The settings that held them in
 * 1.0 remain as names only, so that a value left in the configuration is
 * refused with a message pointing to the file, without showing the value.
 * Base URLs are superuser-only to read, and only a superuser sets them,
 * since whoever controls them receives the keys.
 *
 * The settings of the provider accounts (URLs, ids, rates, the window,
 * paused) are PGC_SUSET, so that a superuser can set them per database
 * with ALTER DATABASE ... SET, for a cluster whose databases belong to
 * different accounts; the worker takes them as it connects, and starts
 * afresh when a reload finds them changed (dbsettings.c).  The worker's
 * own mechanics (timeouts, transfers, lease, retention) stay PGC_SIGHUP,
 * one for the cluster.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <float.h>

#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "celloattr.h"

char	   *celloattr_database = NULL;
int			celloattr_max_workers = 8;
char	   *celloattr_stripe_api_url = NULL;
char	   *celloattr_stripe_webhook_endpoint = NULL;
char	   *celloattr_stripe_api_version = NULL;
char	   *celloattr_chargebee_site = NULL;
char	   *celloattr_chargebee_api_url = NULL;
char	   *celloattr_chargebee_webhook_url = NULL;
bool		celloattr_chargebee_custom_fields = false;
char	   *celloattr_cello_api_url = NULL;
int			celloattr_transaction_window = 30 * SECS_PER_DAY;
int			celloattr_max_in_flight = 16;
int			celloattr_connect_timeout = 5000;
int			celloattr_request_timeout = 30000;
int			celloattr_max_attempts = 10;
int			celloattr_backoff_base = 1000;
int			celloattr_backoff_max = 3600;
int			celloattr_poll_interval = 10000;
int			celloattr_lease = 300;
bool		celloattr_allow_http = false;
bool		celloattr_paused = false;
int			celloattr_log_body_limit = 8192;
double		celloattr_stripe_rate_limit = 25;
double		celloattr_chargebee_rate_limit = 120;
double		celloattr_cello_rate_limit = 10;
int			celloattr_retention = 30 * MINS_PER_HOUR * HOURS_PER_DAY;
int			celloattr_retention_batch = 1000;

/* What the settings of 1.0 that held secrets are now set to: always "". */
static char *removed_secret_values[CELLOATTR_SECRET_KEYS];

/* A value for a 1.0 secret setting: refused, and not shown back. */
static bool
refuse_secret(int key, char **newval)
{
	const char *name = celloattr_secret_keys[key];

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	GUC_check_errcode(ERRCODE_FEATURE_NOT_SUPPORTED);
	GUC_check_errmsg("provider secrets are no longer settings: the value of celloattr.%s is ignored",
					 name);
	GUC_check_errhint("Move it to the secrets file named by celloattr.secrets_file, as %s = '...', and remove celloattr.%s from the configuration.",
					  name, name);
	return false;
}

/* A check hook per name: the hook is not told which setting it checks. */
#define REFUSE_SECRET_HOOK(n) \
static bool \
refuse_secret_##n(char **newval, void **extra, GucSource source) \
{ \
	return refuse_secret(n, newval); \
}
REFUSE_SECRET_HOOK(0)
REFUSE_SECRET_HOOK(1)
REFUSE_SECRET_HOOK(2)
REFUSE_SECRET_HOOK(3)
REFUSE_SECRET_HOOK(4)
REFUSE_SECRET_HOOK(5)

static GucStringCheckHook const refuse_secret_hooks[] = {
	refuse_secret_0, refuse_secret_1, refuse_secret_2,
	refuse_secret_3, refuse_secret_4, refuse_secret_5,
};

StaticAssertDecl(lengthof(refuse_secret_hooks) == CELLOATTR_SECRET_KEYS,
				 "one check hook per secret key");

/* celloattr.database: '*', or a list of names (quoted as in search_path). */
static bool
check_database_list(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	List	   *names = NIL;
	bool		ok;

	if (strcmp(*newval, "*") == 0)
		return true;
	copy = pstrdup(*newval);
	ok = SplitGUCList(copy, ',', &names) && names != NIL;
	list_free(names);
	pfree(copy);
	if (!ok)
	{
		GUC_check_errdetail("celloattr.database takes '*' or a comma-separated list of database names.");
		return false;
	}
	return true;
}

List *
celloattr_listed_databases(void)
{
	List	   *names = NIL;

	if (celloattr_database == NULL || strcmp(celloattr_database, "*") == 0)
		return NIL;
	/* checked by check_database_list: cannot fail */
	(void) SplitGUCList(pstrdup(celloattr_database), ',', &names);
	return names;
}

bool
celloattr_serves_database(const char *name)
{
	List	   *names = celloattr_listed_databases();
	ListCell   *lc;

	if (names == NIL)
		return true;
	foreach(lc, names)
		if (strcmp(lfirst(lc), name) == 0)
			return true;
	return false;
}

/*
 * A setting of the provider accounts a database's repairs go to: set for
 * the cluster (postgresql.conf, ALTER SYSTEM) or, by a superuser, for one
 * database (ALTER DATABASE ... SET); superuser-only to read.
 */
static void
define_account_string(const char *name, const char *desc, char **var,
					  const char *boot)
{
	DefineCustomStringVariable(name, desc, NULL, var, boot,
							   PGC_SUSET, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
}

void
celloattr_define_gucs(bool preloading)
{
	/* The launcher's: they mean nothing without it. */
	if (preloading)
	{
		DefineCustomStringVariable("celloattr.database",
								   "Databases whose repairs celloattr workers carry out: '*' for every one where the extension is created, or a list.",
								   NULL, &celloattr_database, "*",
								   PGC_SIGHUP, GUC_LIST_INPUT,
								   check_database_list, NULL, NULL);
		DefineCustomIntVariable("celloattr.max_workers",
								"Most celloattr workers at once, one per database served.",
								NULL, &celloattr_max_workers, 8, 1, 1024,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
	}

	DefineCustomStringVariable("celloattr.secrets_file",
							   "File holding the provider secrets, relative to the data directory; empty for none.",
							   NULL, &celloattr_secrets_file, "celloattr.secrets",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	for (int k = 0; k < CELLOATTR_SECRET_KEYS; k++)
	{
		char	   *name = psprintf("celloattr.%s", celloattr_secret_keys[k]);

		DefineCustomStringVariable(name,
								   "Removed: this secret goes in the secrets file (celloattr.secrets_file).",
								   NULL, &removed_secret_values[k], "",
								   PGC_SIGHUP, GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
								   refuse_secret_hooks[k], NULL, NULL);
		pfree(name);
	}

	define_account_string("celloattr.stripe_api_url",
						  "Base URL of the Stripe API.",
						  &celloattr_stripe_api_url, "https://api.stripe.com");
	define_account_string("celloattr.stripe_webhook_endpoint",
						  "Id (we_...) of Cello's webhook endpoint in the Stripe account, where past events are resent.",
						  &celloattr_stripe_webhook_endpoint, "");
	define_account_string("celloattr.stripe_api_version",
						  "Stripe-Version header to pin, empty for the account's default.",
						  &celloattr_stripe_api_version, "");
	define_account_string("celloattr.chargebee_site",
						  "Chargebee site name; the API is https://{site}.chargebee.com/api/v2.",
						  &celloattr_chargebee_site, "");
	define_account_string("celloattr.chargebee_api_url",
						  "Full Chargebee API base URL; overrides chargebee_site when set.",
						  &celloattr_chargebee_api_url, "");
	define_account_string("celloattr.chargebee_webhook_url",
						  "Cello's Chargebee webhook URL, where past payment events are re-delivered.",
						  &celloattr_chargebee_webhook_url, "");
	DefineCustomBoolVariable("celloattr.chargebee_custom_fields",
							 "Write the referral to cf_ custom fields instead of meta_data in Chargebee.",
							 NULL, &celloattr_chargebee_custom_fields, false,
							 PGC_SUSET, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	define_account_string("celloattr.cello_api_url",
						  "Base URL of the Cello API (sandbox: https://api.sandbox.cello.so).",
						  &celloattr_cello_api_url, "https://api.cello.so");

	DefineCustomIntVariable("celloattr.transaction_window",
							"Age up to which past transactions are replayed; older ones go to the support report.",
							NULL, &celloattr_transaction_window, 30 * SECS_PER_DAY,
							60, 365 * SECS_PER_DAY,
							PGC_SUSET, GUC_UNIT_S | GUC_SUPERUSER_ONLY,
							NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.max_in_flight",
							"Most HTTP transfers the worker has in flight at once.",
							NULL, &celloattr_max_in_flight, 16, 1, 512,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.connect_timeout",
							"Time allowed to connect to a provider.",
							NULL, &celloattr_connect_timeout, 5000, 100, 300000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.request_timeout",
							"Time allowed for a whole HTTP request, connection included.",
							NULL, &celloattr_request_timeout, 30000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.max_attempts",
							"Attempts of a step before it fails; waiting out a 429 does not count.",
							NULL, &celloattr_max_attempts, 10, 1, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.backoff_base",
							"First retry delay; it doubles with each attempt, with jitter.",
							NULL, &celloattr_backoff_base, 1000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.backoff_max",
							"Longest delay between two attempts of a step.",
							NULL, &celloattr_backoff_max, 3600, 1, 7 * SECS_PER_DAY,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.poll_interval",
							"Longest idle sleep of the worker; commits that queue work wake it at once.",
							NULL, &celloattr_poll_interval, 10000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.lease",
							"How long a claimed step is recorded as reserved (lease_until); steps of a worker that died are claimed again when the next one starts.",
							NULL, &celloattr_lease, 300, 5, SECS_PER_DAY,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomBoolVariable("celloattr.allow_http",
							 "Allow plain http:// provider URLs (for local fakes only).",
							 NULL, &celloattr_allow_http, false,
							 PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomBoolVariable("celloattr.paused",
							 "Stop starting new steps (what is in flight finishes); queueing goes on.",
							 NULL, &celloattr_paused, false,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.log_body_limit",
							"Bytes of each request and response body kept in celloattr.http_log.",
							NULL, &celloattr_log_body_limit, 8192, 0, 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomRealVariable("celloattr.stripe_rate_limit",
							 "Most Stripe requests per second (0: no pacing).",
							 NULL, &celloattr_stripe_rate_limit, 25, 0, 10000,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("celloattr.chargebee_rate_limit",
							 "Most Chargebee requests per minute (0: no pacing).",
							 NULL, &celloattr_chargebee_rate_limit, 120, 0, 1000000,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("celloattr.cello_rate_limit",
							 "Most Cello API requests per second (0: no pacing).",
							 NULL, &celloattr_cello_rate_limit, 10, 0, 10000,
							 PGC_SUSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("celloattr.retention",
							"Age after which the worker deletes HTTP log rows and finished steps (0: keep them forever).",
							NULL, &celloattr_retention, 30 * MINS_PER_HOUR * HOURS_PER_DAY,
							0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MIN, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.retention_batch",
							"Most rows of one table the worker deletes in one transaction when pruning.",
							NULL, &celloattr_retention_batch, 1000, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	MarkGUCPrefixReserved("celloattr");
}
