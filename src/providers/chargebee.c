/*-------------------------------------------------------------------------
 *
 * chargebee.c
 *	  The Chargebee repair path (Chargebee's API v2 reference).
 *
 *	  chargebee_customer   find the customer (by id, else by the custom
 *	                       field cf_new_user_id when the site uses custom
 *	                       fields, else by exact email), refuse a
 *	                       conflicting cello_ucc unless forced, write our keys
 *	  chargebee_payments   (chargebee_payments.c) the customer's payments
 *	  chargebee_redeliver  POST the event's JSON to Cello's Chargebee webhook
 *	                       with its basic auth (Chargebee has no resend API)
 *
 * Chargebee replaces meta_data wholesale on update, so the customer's
 * meta_data object is read, our keys merged into it, and the whole object
 * written back.  Every POST carries the step's idempotency key in
 * chargebee-idempotency-key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "json.h"
#include "providers.h"

typedef enum CbPhase
{
	FIND_BY_ID,
	FIND_BY_CUSTOM_FIELD,
	FIND_BY_EMAIL,
	UPDATE_CUSTOMER
} CbPhase;

typedef struct CbState
{
	CbPhase		phase;
	char	   *customer;
	int64		customer_since; /* its created_at (unix s), 0 if unknown */
} CbState;

/* Chargebee's error body (and Cello's webhook's) says it in "message". */
char *
chargebee_message(const char *body)
{
	return json_message_at(body, "message");
}

static CbState *
state_of(Job *job)
{
	if (job->state == NULL)
		job->state = palloc0(sizeof(CbState));
	return (CbState *) job->state;
}

char *
chargebee_api_base(void)
{
	if (celloattr_chargebee_api_url && celloattr_chargebee_api_url[0])
		return base_url(celloattr_chargebee_api_url);
	if (celloattr_chargebee_site && celloattr_chargebee_site[0])
		return psprintf("https://%s.chargebee.com/api/v2",
						url_escape(celloattr_chargebee_site));
	return NULL;
}

/* A request to Chargebee with its authentication; NULL (job failed) if unset. */
HttpExchange *
chargebee_request(Job *job, const char *method, const char *path_fmt,...)
{
	HttpExchange *ex;
	char	   *base;
	va_list		args;

	if (celloattr_chargebee_api_key == NULL || celloattr_chargebee_api_key[0] == '\0')
	{
		job_fail(job, "chargebee_api_key is not set in the secrets file (celloattr.secrets_file)");
		return NULL;
	}
	base = chargebee_api_base();
	if (base == NULL)
	{
		job_fail(job, "neither celloattr.chargebee_site nor celloattr.chargebee_api_url is set");
		return NULL;
	}
	va_start(args, path_fmt);
	ex = job_requestv(job, method, base, path_fmt, args);
	va_end(args);
	/* basic auth: the API key is the user name, the password is empty */
	http_add_header(ex, "Authorization: %s", basic_auth(celloattr_chargebee_api_key, ""));
	if (strcmp(method, "POST") == 0)
	{
		http_add_header(ex, "Content-Type: application/x-www-form-urlencoded");
		http_add_header(ex, "chargebee-idempotency-key: %s", job->idempotency_key);
	}
	return ex;
}

static void
send_in_phase(Job *job, HttpExchange *ex, CbPhase phase)
{
	if (ex)
	{
		state_of(job)->phase = phase;
		job_send(job, ex);
	}
}

/* ---------------------------------------------------- chargebee_customer */

static void
find_by_filter(Job *job, const char *filter, const char *value, CbPhase phase)
{
	send_in_phase(job, chargebee_request(job, "GET", "/customers?%s%%5Bis%%5D=%s&limit=10",
										 filter, url_escape(value)), phase);
}

static void
customer_start(Job *job)
{
	if (job->customer_id)
		send_in_phase(job, chargebee_request(job, "GET", "/customers/%s",
											 url_escape(job->customer_id)),
					  FIND_BY_ID);
	else if (celloattr_chargebee_custom_fields)
		find_by_filter(job, "cf_new_user_id", job->new_user_id, FIND_BY_CUSTOM_FIELD);
	else if (job->email)
		find_by_filter(job, "email", job->email, FIND_BY_EMAIL);
	else
		job_fail(job, "no way to find the Chargebee customer of user %s: pass customer_id or email (or turn on celloattr.chargebee_custom_fields to look up cf_new_user_id)",
				 job->new_user_id);
}

/* The customer's meta_data as an object (Chargebee may answer it as a
 * JSON string); a new object when it has none.  Caller puts it. */
static struct json_object *
meta_data_of(struct json_object *customer)
{
	struct json_object *md = json_at(customer, "meta_data");
	struct json_object *copy = json_parse(md == NULL ? NULL :
										  json_object_is_type(md, json_type_string)
										  ? json_object_get_string(md) : json_text(md));

	if (copy && json_object_is_type(copy, json_type_object))
		return copy;
	json_object_put(copy);
	return json_object_new_object();
}

/* Our three keys: in meta_data, or as cf_ fields by setting. */
static char *
our_key(struct json_object *customer, const char *key)
{
	return celloattr_chargebee_custom_fields
		? json_string_at(customer, psprintf("cf_%s", key))
		: json_string_at(customer, psprintf("meta_data.%s", key));
}

/* The update that writes our keys, as a form body. */
static char *
update_body(Job *job, struct json_object *customer)
{
	StringInfoData body;

	initStringInfo(&body);
	if (celloattr_chargebee_custom_fields)
	{
		form_append(&body, "cf_cello_ucc", job->ucc);
		form_append(&body, "cf_new_user_id", job->new_user_id);
		if (job->organization_id)
			form_append(&body, "cf_new_user_organization_id", job->organization_id);
	}
	else
	{
		/* every other key of the stored object is written back as it was */
		struct json_object *md = meta_data_of(customer);

		json_object_object_add(md, "cello_ucc", json_object_new_string(job->ucc));
		json_object_object_add(md, "new_user_id", json_object_new_string(job->new_user_id));
		if (job->organization_id)
			json_object_object_add(md, "new_user_organization_id",
								   json_object_new_string(job->organization_id));
		form_append(&body, "meta_data", json_text(md));
		json_object_put(md);
	}
	return body.data;
}

static void
follow_with_payments(Job *job, const char *id)
{
	CbState    *st = state_of(job);

	job_follow_up(job, "chargebee_payments",
				  psprintf("{\"customer\": %s, \"customer_since\": %lld}",
						   json_quote(id), (long long) st->customer_since),
				  NULL, false);
	job_done(job);
}

/*
 * The customer is known: refuse a conflicting referral unless forced, then
 * write our keys (or, in a dry run, only say what would be written).
 */
static void
attach_referral(Job *job, struct json_object *customer)
{
	CbState    *st = state_of(job);
	char	   *id = json_string_at(customer, "id");
	char	   *in_meta = json_string_at(customer, "meta_data.cello_ucc");
	char	   *in_cf = json_string_at(customer, "cf_cello_ucc");
	char	   *current = our_key(customer, "cello_ucc");
	const char *where = celloattr_chargebee_custom_fields ? "custom_fields" : "meta_data";
	bool		already;
	HttpExchange *ex;

	if (id == NULL)
	{
		job_fail(job, "Chargebee answered a customer without an id");
		return;
	}
	/* Cello reads either place: a different code in either is a dispute */
	if (!job->force)
	{
		const char *other = (in_meta && strcmp(in_meta, job->ucc) != 0) ? in_meta :
			(in_cf && strcmp(in_cf, job->ucc) != 0) ? in_cf : NULL;

		if (other)
		{
			job_fail(job, "Chargebee customer %s already carries cello_ucc %s, not %s; pass force => true to overwrite it",
					 id, other, job->ucc);
			return;
		}
	}
	job->found_customer = id;
	st->customer = id;
	(void) json_int_at(customer, "created_at", &st->customer_since);
	already = same(current, job->ucc) &&
		same(our_key(customer, "new_user_id"), job->new_user_id) &&
		(job->organization_id == NULL ||
		 same(our_key(customer, "new_user_organization_id"), job->organization_id));

	if (job->dry_run || already)
	{
		job->plan = psprintf("{\"customer\": %s, \"current_cello_ucc\": %s, \"%s\": %s}",
							 json_quote(id), current ? json_quote(current) : "null", where,
							 already ? "\"already set\"" : "\"would be set\"");
		follow_with_payments(job, id);
		return;
	}

	ex = chargebee_request(job, "POST", "/customers/%s", url_escape(id));
	if (ex == NULL)
		return;
	ex->body = update_body(job, customer);
	ex->body_len = strlen(ex->body);
	send_in_phase(job, ex, UPDATE_CUSTOMER);
}

static void
customer_response(Job *job, HttpExchange *ex)
{
	CbState    *st = state_of(job);
	struct json_object *answer;
	struct json_object *customer;
	bool		deleted = false;

	if (st->phase == FIND_BY_ID && ex->error == NULL && ex->status == 404)
	{
		job_fail(job, "Chargebee has no customer %s (HTTP 404: %s)", job->customer_id,
				 chargebee_message(ex->response) ? chargebee_message(ex->response) : "not found");
		return;
	}
	if (!job_response_ok(job, ex, CHARGEBEE_RETRY_AFTER, chargebee_message))
		return;
	answer = json_parse(ex->response);
	if (answer == NULL)
	{
		job_retry(job, "Chargebee answered HTTP %ld with a body that is not JSON", ex->status);
		return;
	}

	switch (st->phase)
	{
		case FIND_BY_ID:
			customer = json_at(answer, "customer");
			if (customer == NULL)
				job_fail(job, "Chargebee answered %s without a customer", ex->url);
			else if (json_bool_at(customer, "deleted", &deleted) && deleted)
				job_fail(job, "Chargebee customer %s was deleted", job->customer_id);
			else
				attach_referral(job, customer);
			break;
		case FIND_BY_CUSTOM_FIELD:
			customer = job_only_customer(job, "Chargebee", answer, "list", "customer",
										 psprintf("cf_new_user_id %s", job->new_user_id));
			if (customer)
				attach_referral(job, customer);
			else if (job->verdict == JOB_RUNNING && job->email)
				find_by_filter(job, "email", job->email, FIND_BY_EMAIL);
			else if (job->verdict == JOB_RUNNING)
				job_fail(job, "no Chargebee customer has cf_new_user_id %s; pass customer_id or email",
						 job->new_user_id);
			break;
		case FIND_BY_EMAIL:
			customer = job_only_customer(job, "Chargebee", answer, "list", "customer",
										 psprintf("email %s", job->email));
			if (customer)
				attach_referral(job, customer);
			else if (job->verdict == JOB_RUNNING)
				job_fail(job, "no Chargebee customer has email %s%s", job->email,
						 celloattr_chargebee_custom_fields
						 ? psprintf(" or cf_new_user_id %s", job->new_user_id) : "");
			break;
		case UPDATE_CUSTOMER:
			customer = json_at(answer, "customer");
			if (!same(our_key(customer, "cello_ucc"), job->ucc))
				job_fail(job, "Chargebee accepted the update of customer %s but it does not show cello_ucc %s",
						 st->customer, job->ucc);
			else
			{
				job->plan = psprintf("{\"customer\": %s, \"%s\": \"set\"}",
									 json_quote(st->customer),
									 celloattr_chargebee_custom_fields ? "custom_fields" : "meta_data");
				follow_with_payments(job, st->customer);
			}
			break;
		default:
			elog(ERROR, "celloattr: chargebee_customer in phase %d", st->phase);
	}
	json_object_put(answer);
}

const StepOps chargebee_customer_step = {
	.kind = "chargebee_customer", .provider = "chargebee",
	.start = customer_start, .on_response = customer_response,
	.replay_safe = true
};

/* --------------------------------------------------- chargebee_redeliver */

/*
 * Chargebee delivers a webhook as a POST of the bare event object with
 * basic auth; Cello's endpoint gets exactly that.
 */
static void
redeliver_start(Job *job)
{
	struct json_object *payload = json_parse(job->payload);
	struct json_object *event = json_at(payload, "event");
	HttpExchange *ex;

	if (event == NULL || !json_object_is_type(event, json_type_object))
		job_fail(job, "chargebee_redeliver step without an event in its payload");
	else if (celloattr_chargebee_webhook_url == NULL || celloattr_chargebee_webhook_url[0] == '\0')
		job_fail(job, "celloattr.chargebee_webhook_url is not set: the URL of Cello's Chargebee webhook (shown in the Cello Portal) is needed to re-deliver events");
	else if (celloattr_chargebee_webhook_username == NULL || celloattr_chargebee_webhook_username[0] == '\0' ||
			 celloattr_chargebee_webhook_password == NULL || celloattr_chargebee_webhook_password[0] == '\0')
		job_fail(job, "chargebee_webhook_username and chargebee_webhook_password are not both set in the secrets file (celloattr.secrets_file): Cello's Chargebee webhook needs its basic-auth pair (shown in the Cello Portal)");
	else
	{
		ex = job_request(job, "POST", base_url(celloattr_chargebee_webhook_url));
		http_add_header(ex, "Authorization: %s",
						basic_auth(celloattr_chargebee_webhook_username,
								   celloattr_chargebee_webhook_password));
		http_add_header(ex, "Content-Type: application/json");
		ex->body = json_text(event);
		ex->body_len = strlen(ex->body);
		ex->unrepeatable = true;	/* no key: Cello's webhook would take it again */
		job_send(job, ex);
	}
	json_object_put(payload);
}

static void
redeliver_response(Job *job, HttpExchange *ex)
{
	if (job_response_ok(job, ex, CHARGEBEE_RETRY_AFTER, chargebee_message))
		job_done(job);
}

/*
 * The request goes to Cello, not to Chargebee: it is paced (and logged)
 * as Cello's, so replays never spend the Chargebee site's API budget.
 */
const StepOps chargebee_redeliver_step = {
	.kind = "chargebee_redeliver", .provider = "cello",
	.start = redeliver_start, .on_response = redeliver_response
};
