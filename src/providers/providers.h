/*-------------------------------------------------------------------------
 *
 * providers.h
 *	  The steps each provider module implements, and the encoders they
 *	  share (encode.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_PROVIDERS_H
#define CELLOATTR_PROVIDERS_H

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"

#include "job.h"

/*
 * Stripe's search API allows 20 reads a second, whatever the account's
 * limit: search requests are paced by this bucket too (worker.c), at 18 a
 * second, so that no second holds more than 20 with a burst of one.
 */
#define STRIPE_SEARCH_PACE "stripe search"
#define STRIPE_SEARCH_RATE 18.0

/* stripe.c, stripe_payments.c */
extern const StepOps stripe_customer_step;
extern const StepOps stripe_payments_step;
extern const StepOps stripe_resend_step;
/* A request to Stripe with its authentication; NULL (job failed) if unset. */
extern HttpExchange *stripe_request(Job *job, const char *method,
									const char *path_fmt,...) pg_attribute_printf(3, 4);
/* Stripe's message in an error body. */
extern char *stripe_message(const char *body);
/* Stripe documents no Retry-After default; back off a second */
#define STRIPE_RETRY_AFTER 1.0

/* chargebee.c, chargebee_payments.c */
extern const StepOps chargebee_customer_step;
extern const StepOps chargebee_payments_step;
extern const StepOps chargebee_redeliver_step;
/* A request to Chargebee with its authentication; NULL (job failed) if unset. */
extern HttpExchange *chargebee_request(Job *job, const char *method,
									   const char *path_fmt,...) pg_attribute_printf(3, 4);
/* The site's API base URL (celloattr.chargebee_api_url, else the one of
 * celloattr.chargebee_site), or NULL when neither is set. */
extern char *chargebee_api_base(void);
/* Chargebee's message (and Cello's webhook's) in an error body. */
extern char *chargebee_message(const char *body);
/* Chargebee's limits reset after about a minute; Retry-After is not documented */
#define CHARGEBEE_RETRY_AFTER 60.0

/* cello.c */
extern const StepOps cello_signup_step;
extern const StepOps cello_transaction_step;

/* Values the HTTP log must never show besides the configured keys: the
 * Cello tokens this process holds (NULL-terminated; queue.c scrub()). */
extern const char *const *celloattr_log_secrets(void);

/* encode.c: application/x-www-form-urlencoded and URL path/query parts */
extern void form_append(StringInfo buf, const char *name, const char *value);
extern void url_append_escaped(StringInfo buf, const char *value);
extern char *url_escape(const char *value);

/* A base URL without its trailing slashes. */
extern char *base_url(const char *setting);

/* Base64 (RFC 4648, padded) of len bytes. */
extern char *base64_encode(const char *data, size_t len);

/* An Authorization header value: "Basic base64(user:password)". */
extern char *basic_auth(const char *user, const char *password);

/* Both strings set and equal. */
static inline bool
same(const char *a, const char *b)
{
	return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* encode.c: money, intervals and times as Cello's events carry them */

/* An ISO 4217 code in upper case. */
extern char *currency_code(const char *currency);

/* An amount in the currency's minor unit (cents) as a decimal in major
 * units; zero-decimal currencies (JPY, KRW, ...) are counted whole. */
extern char *major_units(int64 amount, const char *currency);

/* Cello's subscription interval for a billing period of count units
 * (day, week, month, year); "one-time" when there is none. */
extern const char *cello_interval(const char *unit, int64 count);

/* RFC 3339 in UTC with 'T' and 'Z', as Cello's events want it. */
extern char *rfc3339_utc(TimestampTz t);

#endif							/* CELLOATTR_PROVIDERS_H */
