/*-------------------------------------------------------------------------
 *
 * cello.c
 *	  The Cello API path (Cello's API reference: authentication, events, errors).
 *
 *	  cello_signup       check the ucc (GET /referral-codes/{ucc}), then send
 *	                     the new-signup event (POST /events)
 *	  cello_transaction  send one registered transaction as invoice-paid or
 *	                     charge-refunded
 *
 * Both first get a bearer token when the worker holds none: POST /token
 * with the access key pair, or with the refresh token shortly before the
 * access token expires.  Tokens live only in this process's memory: they
 * are never written to a table, and the log writer redacts them (and the
 * token exchange's bodies are replaced by redacted ones once read).  One
 * token request is out at a time; a step that needs a token meanwhile
 * waits briefly without using an attempt.  A call answered 401 gets a new
 * token and is made once more, in the same step.
 *
 * v1 events carry no idempotency key.  Each event is a step of its own,
 * recorded done (with the event Cello acknowledged, in jobs.result) in the
 * same transaction that ends it, so a step is never sent again once its
 * acknowledgement is recorded.  An event whose fate is unknown (the
 * answer lost after the request went out, or the worker gone while it was
 * in flight) is set aside for an operator instead of sent again
 * (job_unsure_if_sent(), orphans.c's requeue): a second event could pay a
 * referrer twice.
 *
 * Events that cannot go through the API (no credentials, older than the
 * window, a field Cello requires is unknown, retries used up) go to the
 * support report with the fields of the event.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "json.h"
#include "providers.h"

/* Cello documents no rate limit nor Retry-After: back off a second */
#define CELLO_RETRY_AFTER 1.0
/* a step that waits for another step's token request looks again after */
#define TOKEN_WAIT_SECONDS 0.2
/* renew a token this long before it expires (at most a tenth of its life) */
#define RENEW_MARGIN_SECONDS 60

typedef enum CelloPhase
{
	TOKEN_LOGIN,
	TOKEN_REFRESH,
	CHECK_UCC,
	SEND_EVENT
} CelloPhase;

typedef struct CelloState
{
	CelloPhase	phase;
	CelloPhase	after_token;	/* the call waiting for the token */
	bool		reauthorized;	/* a 401 already got a new token */
	char	   *used_token;		/* the access token of the last call */
	char	   *event;			/* the JSON to POST /events */
} CelloState;

/* The worker's tokens (malloc'd), for the key id and URL they belong to. */
static struct
{
	char	   *access;
	TimestampTz access_renew_at;
	char	   *refresh;
	TimestampTz refresh_renew_at;	/* 0: lifetime not given */
	char	   *owner;
	bool		in_flight;
	TimestampTz in_flight_since;
}			tokens;

static const char *log_secrets[3];

const char *const *
celloattr_log_secrets(void)
{
	int			n = 0;

	if (tokens.access)
		log_secrets[n++] = tokens.access;
	if (tokens.refresh)
		log_secrets[n++] = tokens.refresh;
	log_secrets[n] = NULL;
	return log_secrets;
}

static void
forget(char **token)
{
	if (*token)
	{
		explicit_bzero(*token, strlen(*token));
		free(*token);
		*token = NULL;
	}
}

static char *
keep(const char *token)
{
	char	   *copy = strdup(token);

	if (copy == NULL)
		elog(ERROR, "celloattr: out of memory keeping a Cello token");
	return copy;
}

/* When to renew a token that lives `seconds` from now. */
static TimestampTz
renew_at(TimestampTz now, int64 seconds)
{
	int64		margin = Min(RENEW_MARGIN_SECONDS, seconds / 10);

	return now + (seconds - margin) * USECS_PER_SEC;
}

static bool
have_credentials(void)
{
	return celloattr_cello_access_key_id && celloattr_cello_access_key_id[0] &&
		celloattr_cello_secret_access_key && celloattr_cello_secret_access_key[0];
}

/* Tokens of another key pair or URL (after a reload) are dropped. */
static void
check_owner(void)
{
	const char *secret = celloattr_cello_secret_access_key ? celloattr_cello_secret_access_key : "";
	char	   *owner = psprintf("%s\n%s\n%08x", celloattr_cello_access_key_id,
								 base_url(celloattr_cello_api_url),
								 hash_bytes((const unsigned char *) secret, (int) strlen(secret)));

	if (tokens.owner == NULL || strcmp(tokens.owner, owner) != 0)
	{
		forget(&tokens.access);
		forget(&tokens.refresh);
		free(tokens.owner);
		tokens.owner = keep(owner);
	}
}

static char *
cello_message(const char *body)
{
	return json_message_at(body, "message");
}

static CelloState *
state_of(Job *job)
{
	if (job->state == NULL)
		job->state = palloc0(sizeof(CelloState));
	return (CelloState *) job->state;
}

static HttpExchange *
cello_request(Job *job, const char *method, const char *path, const char *json_body)
{
	HttpExchange *ex = job_requestf(job, method, celloattr_cello_api_url, "%s", path);

	if (json_body)
	{
		http_add_header(ex, "Content-Type: application/json");
		ex->body = pstrdup(json_body);
		ex->body_len = strlen(json_body);
	}
	return ex;
}

/* ----------------------------------------------------------------- token */

static void
send_token_request(Job *job, bool refresh)
{
	struct json_object *body = json_object_new_object();
	HttpExchange *ex;

	if (refresh)
		json_object_object_add(body, "refreshToken", json_object_new_string(tokens.refresh));
	else
	{
		json_object_object_add(body, "accessKeyId",
							   json_object_new_string(celloattr_cello_access_key_id));
		json_object_object_add(body, "secretAccessKey",
							   json_object_new_string(celloattr_cello_secret_access_key));
	}
	ex = cello_request(job, "POST", "/token", json_text(body));
	json_object_put(body);
	tokens.in_flight = true;
	tokens.in_flight_since = GetCurrentTimestamp();
	state_of(job)->phase = refresh ? TOKEN_REFRESH : TOKEN_LOGIN;
	job_send(job, ex);
}

static void issue(Job *job, CelloPhase phase);

/* Make the call `next` with a valid token, getting one first if need be. */
static void
with_token(Job *job, CelloPhase next)
{
	TimestampTz now = GetCurrentTimestamp();
	long		stale_ms = celloattr_connect_timeout + celloattr_request_timeout + 5000;

	state_of(job)->after_token = next;
	check_owner();
	if (tokens.access && now < tokens.access_renew_at)
		issue(job, next);
	else if (tokens.in_flight &&
			 !TimestampDifferenceExceeds(tokens.in_flight_since, now, (int) stale_ms))
		job_snooze(job, TOKEN_WAIT_SECONDS,
				   "waiting for the Cello token another step is getting");
	else
		send_token_request(job, tokens.refresh &&
						   (tokens.refresh_renew_at == 0 || now < tokens.refresh_renew_at));
}

/* The token exchange's bodies, once read, as the log may keep them. */
static void
redact_token_exchange(HttpExchange *ex)
{
	struct json_object *answer = json_parse(ex->response);
	struct json_object *shown = json_object_new_object();

	if (answer && json_object_is_type(answer, json_type_object))
	{
		json_object_object_foreach(answer, key, value)
		{
			/* accessToken, refreshToken: the lifetimes and messages stay */
			if (strstr(key, "oken") && json_object_is_type(value, json_type_string))
				json_object_object_add(shown, key, json_object_new_string("[redacted]"));
			else
				json_object_object_add(shown, key, json_object_get(value));
		}
		ex->response = json_text(shown);
		ex->response_len = strlen(ex->response);
	}
	json_object_put(answer);
	json_object_put(shown);
	ex->body = pstrdup(state_of((Job *) ex->owner)->phase == TOKEN_REFRESH
					   ? "{\"refreshToken\":\"[redacted]\"}"
					   : "{\"accessKeyId\":\"[redacted]\",\"secretAccessKey\":\"[redacted]\"}");
	ex->body_len = strlen(ex->body);
}

static void
token_response(Job *job, HttpExchange *ex)
{
	CelloState *st = state_of(job);
	bool		refresh = st->phase == TOKEN_REFRESH;
	struct json_object *answer = json_parse(ex->response);
	char	   *access = json_string_at(answer, "accessToken");
	char	   *refresh_token = json_string_at(answer, "refreshToken");
	int64		expires = 0;
	int64		refresh_expires = 0;
	TimestampTz now = GetCurrentTimestamp();

	tokens.in_flight = false;
	(void) json_int_at(answer, "expiresIn", &expires);
	(void) json_int_at(answer, "refreshTokenExpiresIn", &refresh_expires);
	json_object_put(answer);
	redact_token_exchange(ex);

	if (ex->error == NULL && (ex->status == 400 || ex->status == 401))
	{
		if (refresh)
		{
			/* the refresh token is gone or expired: log in again */
			forget(&tokens.refresh);
			send_token_request(job, false);
		}
		else
			job_fail(job, "Cello rejected the access key pair: %s",
					 cello_message(ex->response) ? cello_message(ex->response)
					 : psprintf("HTTP %ld", ex->status));
		return;
	}
	if (!job_response_ok(job, ex, CELLO_RETRY_AFTER, cello_message))
		return;
	if (access == NULL || expires <= 0 || (!refresh && refresh_token == NULL))
	{
		job_retry(job, "Cello answered POST /token with HTTP %ld but without the expected tokens",
				  ex->status);
		return;
	}
	check_owner();
	forget(&tokens.access);
	tokens.access = keep(access);
	tokens.access_renew_at = renew_at(now, expires);
	if (!refresh)
	{
		forget(&tokens.refresh);
		tokens.refresh = keep(refresh_token);
		tokens.refresh_renew_at = refresh_expires > 0 ? renew_at(now, refresh_expires) : 0;
	}
	explicit_bzero(access, strlen(access));
	if (refresh_token)
		explicit_bzero(refresh_token, strlen(refresh_token));
	issue(job, st->after_token);
}

/* ---------------------------------------------------------------- calls */

static void
issue(Job *job, CelloPhase phase)
{
	CelloState *st = state_of(job);
	HttpExchange *ex;

	if (phase == CHECK_UCC)
		ex = cello_request(job, "GET", psprintf("/referral-codes/%s", url_escape(job->ucc)), NULL);
	else
	{
		ex = cello_request(job, "POST", "/events", st->event);
		ex->unrepeatable = true;	/* v1 events have no idempotency key */
	}
	http_add_header(ex, "Authorization: Bearer %s", tokens.access);
	st->used_token = pstrdup(tokens.access);
	st->phase = phase;
	job_send(job, ex);
}

static void
call_response(Job *job, HttpExchange *ex)
{
	CelloState *st = state_of(job);
	struct json_object *answer;
	bool		flag = false;

	if (ex->error == NULL && ex->status == 401 && !st->reauthorized)
	{
		/* the token was refused: a new one, and this call once more */
		st->reauthorized = true;
		if (same(tokens.access, st->used_token))
			forget(&tokens.access);
		with_token(job, st->phase);
		return;
	}
	if (!job_response_ok(job, ex, CELLO_RETRY_AFTER, cello_message))
		return;
	answer = json_parse(ex->response);
	if (st->phase == CHECK_UCC)
	{
		if (!json_bool_at(answer, "valid", &flag))
			job_retry(job, "Cello answered GET /referral-codes without \"valid\"");
		else if (!flag)
			job_fail(job, "Cello does not know ucc %s (GET /referral-codes answered valid: false)",
					 job->ucc);
		else
			issue(job, SEND_EVENT);
	}
	else if (json_bool_at(answer, "success", &flag) && !flag)
		job_fail(job, "Cello answered POST /events with success: false");
	else
	{
		job->result = psprintf("{\"acknowledged_event\": %s}", st->event);
		job_done(job);
	}
	json_object_put(answer);
}

static void
cello_response(Job *job, HttpExchange *ex)
{
	CelloState *st = state_of(job);

	if (st->phase == TOKEN_LOGIN || st->phase == TOKEN_REFRESH)
		token_response(job, ex);
	else
		call_response(job, ex);
}

/* --------------------------------------------------------------- events */

static void
add_string(struct json_object *obj, const char *key, const char *value)
{
	if (value)
		json_object_object_add(obj, key, json_object_new_string(value));
}

/* The v1 EventEnvelope (§2); price is JSON number text. */
static char *
event_json(Job *job, const char *trigger, const char *timestamp,
		   const char *price, const char *currency, struct json_object *subscription)
{
	struct json_object *root = json_object_new_object();
	struct json_object *payload = json_object_new_object();
	struct json_object *context = json_object_new_object();
	struct json_object *user = json_object_new_object();
	struct json_object *event = json_object_new_object();
	char	   *text;

	json_object_object_add(root, "eventName", json_object_new_string("ReferralUpdated"));
	add_string(payload, "ucc", job->ucc);
	add_string(payload, "newUserId", job->new_user_id);
	json_object_object_add(payload, "price", json_object_new_double_s(strtod(price, NULL), price));
	add_string(payload, "currency", currency);
	json_object_object_add(root, "payload", payload);
	add_string(user, "id", job->new_user_id);
	add_string(user, "email", job->email);
	add_string(user, "name", job->name);
	add_string(user, "organizationId", job->organization_id);
	json_object_object_add(context, "newUser", user);
	add_string(event, "trigger", trigger);
	add_string(event, "timestamp", timestamp);
	json_object_object_add(context, "event", event);
	if (subscription)
		json_object_object_add(context, "subscription", subscription);
	json_object_object_add(root, "context", context);
	text = json_text(root);
	json_object_put(root);
	return text;
}

/* ---------------------------------------------------------- cello_signup */

static TimestampTz
signup_time(Job *job)
{
	return job->has_signed_up_at ? job->signed_up_at : job->requested_at;
}

static void
report_signup(Job *job, const char *reason)
{
	SupportItem *s = job_support(job, "new-signup", reason);

	s->has_timestamp = true;
	s->event_timestamp = signup_time(job);
	s->price = "0";
}

static void
signup_start(Job *job)
{
	if (!have_credentials())
	{
		report_signup(job, "no Cello API access configured (cello_access_key_id in the secrets file)");
		job->verdict = JOB_SUPPORT;
		return;
	}
	state_of(job)->event = event_json(job, "new-signup", rfc3339_utc(signup_time(job)),
									  "0", "", NULL);
	/* an unknown ucc fails the repair before anything is changed */
	with_token(job, CHECK_UCC);
}

static void
signup_give_up(Job *job)
{
	report_signup(job, job->error);
}

const StepOps cello_signup_step = {
	.kind = "cello_signup", .provider = "cello",
	.start = signup_start, .on_response = cello_response,
	.give_up = signup_give_up
};

/* ----------------------------------------------------- cello_transaction */

/* A registered transaction, as attribute.c put it in the payload. */
typedef struct Transaction
{
	int64		id;
	char	   *invoice_id;
	char	   *trigger;
	char	   *amount;			/* JSON number text, major units */
	char	   *currency;
	char	   *paid_at;		/* RFC 3339, UTC */
	int64		paid_at_epoch;
	char	   *interval;
	char	   *product_key;
	char	   *subscription_id;
	bool		has_seats;
	int64		seats;
} Transaction;

static bool
read_transaction(Job *job, Transaction *t)
{
	struct json_object *p = json_parse(job->payload);
	struct json_object *amount = json_at(p, "amount");
	bool		ok;

	memset(t, 0, sizeof(*t));
	(void) json_int_at(p, "transaction_id", &t->id);
	t->invoice_id = json_string_at(p, "invoice_id");
	t->trigger = json_string_at(p, "trigger");
	if (amount && (json_object_is_type(amount, json_type_int) ||
				   json_object_is_type(amount, json_type_double)))
		t->amount = json_text(amount);
	t->currency = json_string_at(p, "currency");
	t->paid_at = json_string_at(p, "paid_at");
	t->interval = json_string_at(p, "interval");
	t->product_key = json_string_at(p, "product_key");
	t->subscription_id = json_string_at(p, "subscription_id");
	t->has_seats = json_int_at(p, "seats", &t->seats);
	ok = json_int_at(p, "paid_at_epoch", &t->paid_at_epoch);
	json_object_put(p);
	return ok && t->id && t->invoice_id && t->trigger && t->amount &&
		t->currency && t->paid_at;
}

static void
report_transaction(Job *job, Transaction *t, const char *reason)
{
	SupportItem *s = job_support(job, t->trigger, reason);

	s->transaction_id = t->id;
	s->has_timestamp = true;
	s->event_timestamp = time_t_to_timestamptz((pg_time_t) t->paid_at_epoch);
	s->price = t->amount;
	s->currency = t->currency;
	s->subscription_id = t->subscription_id;
	s->invoice_id = t->invoice_id;
	s->interval = t->interval;
	s->has_seats = t->has_seats;
	s->seats = (int32) t->seats;
	s->product_key = t->product_key;
	job->verdict = JOB_SUPPORT;
}

static void
transaction_start(Job *job)
{
	Transaction t;
	struct json_object *sub;

	if (!read_transaction(job, &t))
	{
		job_fail(job, "cello_transaction step without a complete transaction in its payload");
		return;
	}
	if (t.paid_at_epoch < (int64) timestamptz_to_time_t(job_window_start()))
		report_transaction(job, &t, psprintf("older than celloattr.transaction_window (%d days) when it was to be sent: Cello imports only recent transactions of a manual attribution",
											 celloattr_transaction_window / SECS_PER_DAY));
	else if (!have_credentials())
		report_transaction(job, &t, "no Cello API access configured (cello_access_key_id in the secrets file)");
	else if (job->email == NULL)
		report_transaction(job, &t, psprintf("Cello's API requires the new user's email for %s, and the attribution has none",
											 t.trigger));
	else if (t.product_key == NULL)
		report_transaction(job, &t, psprintf("Cello's API requires a product key for %s, and the transaction has none",
											 t.trigger));
	else
	{
		sub = json_object_new_object();
		add_string(sub, "id", t.subscription_id);
		add_string(sub, "invoiceId", t.invoice_id);
		add_string(sub, "interval", t.interval);
		if (t.has_seats)
			json_object_object_add(sub, "seatsUsed", json_object_new_int64(t.seats));
		add_string(sub, "productKey", t.product_key);
		state_of(job)->event = event_json(job, t.trigger, t.paid_at, t.amount,
										  t.currency, sub);
		with_token(job, SEND_EVENT);
	}
}

static void
transaction_give_up(Job *job)
{
	Transaction t;

	if (read_transaction(job, &t))
		report_transaction(job, &t, job->error);
}

const StepOps cello_transaction_step = {
	.kind = "cello_transaction", .provider = "cello",
	.start = transaction_start, .on_response = cello_response,
	.give_up = transaction_give_up
};
