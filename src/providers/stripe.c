/*-------------------------------------------------------------------------
 *
 * stripe.c
 *	  The Stripe repair path (Stripe's API reference).
 *
 *	  stripe_customer  find the customer (by id, else metadata new_user_id
 *	                   search, else exact email), refuse a conflicting
 *	                   cello_ucc unless forced, set the metadata keys
 *	  stripe_payments  (stripe_payments.c) the customer's events to resend
 *	  stripe_resend    POST /v1/events/{id}/retry to Cello's endpoint
 *
 * Stripe merges metadata keys on update, so only our keys are sent and
 * every other key stays as it was.  Every POST carries the step's
 * idempotency key, so a step sent again after a crash changes nothing twice.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "json.h"
#include "providers.h"

typedef enum StripePhase
{
	FIND_BY_ID,
	FIND_BY_METADATA,
	FIND_BY_EMAIL,
	UPDATE_METADATA
} StripePhase;

typedef struct StripeState
{
	StripePhase phase;
	char	   *customer;
	int64		customer_since; /* its created (unix s), 0 if unknown */
} StripeState;

char *
stripe_message(const char *body)
{
	return json_message_at(body, "error.message");
}

static StripeState *
state_of(Job *job)
{
	if (job->state == NULL)
		job->state = palloc0(sizeof(StripeState));
	return (StripeState *) job->state;
}

/* A request to Stripe with its authentication; NULL (job failed) if unset. */
HttpExchange *
stripe_request(Job *job, const char *method, const char *path_fmt,...)
{
	HttpExchange *ex;
	va_list		args;

	if (celloattr_stripe_secret_key == NULL || celloattr_stripe_secret_key[0] == '\0')
	{
		job_fail(job, "stripe_secret_key is not set in the secrets file (celloattr.secrets_file)");
		return NULL;
	}
	va_start(args, path_fmt);
	ex = job_requestv(job, method, celloattr_stripe_api_url, path_fmt, args);
	va_end(args);
	http_add_header(ex, "Authorization: Bearer %s", celloattr_stripe_secret_key);
	if (celloattr_stripe_api_version && celloattr_stripe_api_version[0])
		http_add_header(ex, "Stripe-Version: %s", celloattr_stripe_api_version);
	if (strcmp(method, "POST") == 0)
	{
		http_add_header(ex, "Content-Type: application/x-www-form-urlencoded");
		http_add_header(ex, "Idempotency-Key: %s", job->idempotency_key);
	}
	return ex;
}

/* A value inside a search query: quoted, with quotes and backslashes escaped. */
static char *
search_literal(const char *value)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '\'');
	for (const char *p = value; *p; p++)
	{
		if (*p == '\'' || *p == '"' || *p == '\\')
			appendStringInfoChar(&buf, '\\');
		appendStringInfoChar(&buf, *p);
	}
	appendStringInfoChar(&buf, '\'');
	return buf.data;
}

static void
find_by_metadata(Job *job)
{
	HttpExchange *ex;
	char	   *query = psprintf("metadata['new_user_id']:%s",
								 search_literal(job->new_user_id));

	ex = stripe_request(job, "GET", "/v1/customers/search?query=%s&limit=10",
						url_escape(query));
	if (ex)
	{
		/* search has a limit of its own, below the account's */
		ex->pace_also = STRIPE_SEARCH_PACE;
		state_of(job)->phase = FIND_BY_METADATA;
		job_send(job, ex);
	}
}

static void
find_by_email(Job *job)
{
	HttpExchange *ex = stripe_request(job, "GET", "/v1/customers?email=%s&limit=10",
									  url_escape(job->email));

	if (ex)
	{
		state_of(job)->phase = FIND_BY_EMAIL;
		job_send(job, ex);
	}
}

static void
customer_start(Job *job)
{
	if (job->customer_id)
	{
		HttpExchange *ex = stripe_request(job, "GET", "/v1/customers/%s",
										  url_escape(job->customer_id));

		if (ex)
		{
			state_of(job)->phase = FIND_BY_ID;
			job_send(job, ex);
		}
	}
	else
		find_by_metadata(job);
}

/* The customer carries the referral: its payments follow, with when it
 * was created (so that they know whether any can be older than the window). */
static void
follow_with_payments(Job *job)
{
	StripeState *st = state_of(job);

	job_follow_up(job, "stripe_payments",
				  psprintf("{\"customer\": %s, \"customer_since\": %lld}",
						   json_quote(st->customer), (long long) st->customer_since),
				  NULL, false);
	job_done(job);
}

/*
 * The customer is known: refuse a conflicting referral unless forced, then
 * set our keys (or, in a dry run, only say what would be set).
 */
static void
attach_referral(Job *job, struct json_object *customer)
{
	char	   *id = json_string_at(customer, "id");
	char	   *current = json_string_at(customer, "metadata.cello_ucc");
	bool		already;
	StringInfoData body;
	HttpExchange *ex;

	if (id == NULL)
	{
		job_fail(job, "Stripe answered a customer without an id");
		return;
	}
	if (current && strcmp(current, job->ucc) != 0 && !job->force)
	{
		job_fail(job, "Stripe customer %s already carries cello_ucc %s, not %s; pass force => true to overwrite it",
				 id, current, job->ucc);
		return;
	}
	job->found_customer = id;
	state_of(job)->customer = id;
	(void) json_int_at(customer, "created", &state_of(job)->customer_since);
	already = same(current, job->ucc) &&
		same(json_string_at(customer, "metadata.new_user_id"), job->new_user_id) &&
		(job->organization_id == NULL ||
		 same(json_string_at(customer, "metadata.new_user_organization_id"),
			  job->organization_id));

	if (job->dry_run || already)
	{
		job->plan = psprintf("{\"customer\": %s, \"current_cello_ucc\": %s, \"metadata\": %s}",
							 json_quote(id), current ? json_quote(current) : "null",
							 already ? "\"already set\"" : "\"would be set\"");
		follow_with_payments(job);
		return;
	}

	initStringInfo(&body);
	form_append(&body, "metadata[cello_ucc]", job->ucc);
	form_append(&body, "metadata[new_user_id]", job->new_user_id);
	if (job->organization_id)
		form_append(&body, "metadata[new_user_organization_id]", job->organization_id);
	ex = stripe_request(job, "POST", "/v1/customers/%s", url_escape(id));
	if (ex == NULL)
		return;
	ex->body = body.data;
	ex->body_len = body.len;
	state_of(job)->phase = UPDATE_METADATA;
	job_send(job, ex);
}

static void
customer_response(Job *job, HttpExchange *ex)
{
	StripeState *st = state_of(job);
	struct json_object *answer;
	struct json_object *customer;
	bool		deleted = false;

	if (!job_response_ok(job, ex, STRIPE_RETRY_AFTER, stripe_message))
		return;
	answer = json_parse(ex->response);
	if (answer == NULL)
	{
		job_retry(job, "Stripe answered HTTP %ld with a body that is not JSON", ex->status);
		return;
	}

	switch (st->phase)
	{
		case FIND_BY_ID:
			if (json_bool_at(answer, "deleted", &deleted) && deleted)
				job_fail(job, "Stripe customer %s was deleted", job->customer_id);
			else
				attach_referral(job, answer);
			break;
		case FIND_BY_METADATA:
			customer = job_only_customer(job, "Stripe", answer, "data", "",
										 psprintf("metadata new_user_id %s", job->new_user_id));
			if (customer)
				attach_referral(job, customer);
			else if (job->verdict == JOB_RUNNING && job->email)
				find_by_email(job);
			else if (job->verdict == JOB_RUNNING)
				job_fail(job, "no Stripe customer has metadata new_user_id %s; pass customer_id or email",
						 job->new_user_id);
			break;
		case FIND_BY_EMAIL:
			customer = job_only_customer(job, "Stripe", answer, "data", "",
										 psprintf("email %s", job->email));
			if (customer)
				attach_referral(job, customer);
			else if (job->verdict == JOB_RUNNING)
				job_fail(job, "no Stripe customer has metadata new_user_id %s or email %s",
						 job->new_user_id, job->email);
			break;
		case UPDATE_METADATA:
			if (!same(json_string_at(answer, "metadata.cello_ucc"), job->ucc))
				job_fail(job, "Stripe accepted the update of customer %s but its metadata does not show cello_ucc %s",
						 st->customer, job->ucc);
			else
			{
				job->plan = psprintf("{\"customer\": %s, \"metadata\": \"set\"}",
									 json_quote(st->customer));
				follow_with_payments(job);
			}
			break;
		default:
			elog(ERROR, "celloattr: stripe_customer in phase %d", st->phase);
	}
	json_object_put(answer);
}

const StepOps stripe_customer_step = {
	.kind = "stripe_customer", .provider = "stripe",
	.start = customer_start, .on_response = customer_response,
	.replay_safe = true
};

/* -------------------------------------------------------- stripe_resend */

static void
resend_start(Job *job)
{
	char	   *event = job_payload_string(job, "event");
	HttpExchange *ex;
	StringInfoData body;

	if (event == NULL)
	{
		job_fail(job, "stripe_resend step without an event in its payload");
		return;
	}
	if (celloattr_stripe_webhook_endpoint == NULL || celloattr_stripe_webhook_endpoint[0] == '\0')
	{
		job_fail(job, "celloattr.stripe_webhook_endpoint is not set: the id (we_...) of Cello's webhook endpoint in Stripe is needed to resend events");
		return;
	}
	ex = stripe_request(job, "POST", "/v1/events/%s/retry", url_escape(event));
	if (ex == NULL)
		return;
	initStringInfo(&body);
	form_append(&body, "webhook_endpoint", celloattr_stripe_webhook_endpoint);
	ex->body = body.data;
	ex->body_len = body.len;
	job_send(job, ex);
}

static void
resend_response(Job *job, HttpExchange *ex)
{
	if (job_response_ok(job, ex, STRIPE_RETRY_AFTER, stripe_message))
		job_done(job);
}

const StepOps stripe_resend_step = {
	.kind = "stripe_resend", .provider = "stripe",
	.start = resend_start, .on_response = resend_response,
	.replay_safe = true
};
