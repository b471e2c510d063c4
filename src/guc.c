/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Every celloattr.* setting, defined in one place.
 *
 * Secrets are PGC_SIGHUP with GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL: only the
 * configuration file (or ALTER SYSTEM) can set them, no other role can read
 * them, and SHOW ALL does not list them.  Base URLs are superuser-only too,
 * since whoever controls them receives the keys.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <float.h>

#include "utils/guc.h"

#include "celloattr.h"

char	   *celloattr_database = NULL;
char	   *celloattr_stripe_api_url = NULL;
char	   *celloattr_stripe_secret_key = NULL;
char	   *celloattr_stripe_webhook_endpoint = NULL;
char	   *celloattr_stripe_api_version = NULL;
char	   *celloattr_chargebee_site = NULL;
char	   *celloattr_chargebee_api_url = NULL;
char	   *celloattr_chargebee_api_key = NULL;
char	   *celloattr_chargebee_webhook_url = NULL;
char	   *celloattr_chargebee_webhook_username = NULL;
char	   *celloattr_chargebee_webhook_password = NULL;
bool		celloattr_chargebee_custom_fields = false;
char	   *celloattr_cello_api_url = NULL;
char	   *celloattr_cello_access_key_id = NULL;
char	   *celloattr_cello_secret_access_key = NULL;
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

#define SECRET_FLAGS (GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL)

/* A secret or URL setting: reloadable, superuser-only. */
static void
define_sighup_string(const char *name, const char *desc, char **var,
					 const char *boot, int flags)
{
	DefineCustomStringVariable(name, desc, NULL, var, boot,
							   PGC_SIGHUP, flags, NULL, NULL, NULL);
}

void
celloattr_define_gucs(bool preloading)
{
	/* The worker connects once, at start: only the postmaster can set it. */
	if (preloading)
		DefineCustomStringVariable("celloattr.database",
								   "Database whose repairs the celloattr worker carries out.",
								   NULL, &celloattr_database, "postgres",
								   PGC_POSTMASTER, 0, NULL, NULL, NULL);

	define_sighup_string("celloattr.stripe_api_url",
						 "Base URL of the Stripe API.",
						 &celloattr_stripe_api_url, "https://api.stripe.com",
						 GUC_SUPERUSER_ONLY);
	define_sighup_string("celloattr.stripe_secret_key",
						 "Stripe secret (sk_...) or restricted (rk_...) key.",
						 &celloattr_stripe_secret_key, "", SECRET_FLAGS);
	define_sighup_string("celloattr.stripe_webhook_endpoint",
						 "Id (we_...) of Cello's webhook endpoint in the Stripe account, where past events are resent.",
						 &celloattr_stripe_webhook_endpoint, "",
						 GUC_SUPERUSER_ONLY);
	define_sighup_string("celloattr.stripe_api_version",
						 "Stripe-Version header to pin, empty for the account's default.",
						 &celloattr_stripe_api_version, "",
						 GUC_SUPERUSER_ONLY);
	define_sighup_string("celloattr.chargebee_site",
						 "Chargebee site name; the API is https://{site}.chargebee.com/api/v2.",
						 &celloattr_chargebee_site, "", GUC_SUPERUSER_ONLY);
	define_sighup_string("celloattr.chargebee_api_url",
						 "Full Chargebee API base URL; overrides chargebee_site when set.",
						 &celloattr_chargebee_api_url, "", GUC_SUPERUSER_ONLY);
	define_sighup_string("celloattr.chargebee_api_key",
						 "Chargebee API key.",
						 &celloattr_chargebee_api_key, "", SECRET_FLAGS);
	define_sighup_string("celloattr.chargebee_webhook_url",
						 "Cello's Chargebee webhook URL, where past payment events are re-delivered.",
						 &celloattr_chargebee_webhook_url, "",
						 GUC_SUPERUSER_ONLY);
	define_sighup_string("celloattr.chargebee_webhook_username",
						 "Basic-auth user name of Cello's Chargebee webhook.",
						 &celloattr_chargebee_webhook_username, "", SECRET_FLAGS);
	define_sighup_string("celloattr.chargebee_webhook_password",
						 "Basic-auth password of Cello's Chargebee webhook.",
						 &celloattr_chargebee_webhook_password, "", SECRET_FLAGS);
	DefineCustomBoolVariable("celloattr.chargebee_custom_fields",
							 "Write the referral to cf_ custom fields instead of meta_data in Chargebee.",
							 NULL, &celloattr_chargebee_custom_fields, false,
							 PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	define_sighup_string("celloattr.cello_api_url",
						 "Base URL of the Cello API (sandbox: https://api.sandbox.cello.so).",
						 &celloattr_cello_api_url, "https://api.cello.so",
						 GUC_SUPERUSER_ONLY);
	define_sighup_string("celloattr.cello_access_key_id",
						 "Cello API access key id.",
						 &celloattr_cello_access_key_id, "", SECRET_FLAGS);
	define_sighup_string("celloattr.cello_secret_access_key",
						 "Cello API secret access key.",
						 &celloattr_cello_secret_access_key, "", SECRET_FLAGS);

	DefineCustomIntVariable("celloattr.transaction_window",
							"Age up to which past transactions are replayed; older ones go to the support report.",
							NULL, &celloattr_transaction_window, 30 * SECS_PER_DAY,
							60, 365 * SECS_PER_DAY,
							PGC_SIGHUP, GUC_UNIT_S | GUC_SUPERUSER_ONLY,
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
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("celloattr.log_body_limit",
							"Bytes of each request and response body kept in celloattr.http_log.",
							NULL, &celloattr_log_body_limit, 8192, 0, 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomRealVariable("celloattr.stripe_rate_limit",
							 "Most Stripe requests per second (0: no pacing).",
							 NULL, &celloattr_stripe_rate_limit, 25, 0, 10000,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("celloattr.chargebee_rate_limit",
							 "Most Chargebee requests per minute (0: no pacing).",
							 NULL, &celloattr_chargebee_rate_limit, 120, 0, 1000000,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("celloattr.cello_rate_limit",
							 "Most Cello API requests per second (0: no pacing).",
							 NULL, &celloattr_cello_rate_limit, 10, 0, 10000,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

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
