/*-------------------------------------------------------------------------
 *
 * stripe.c
 *	  The Stripe repair path (Stripe's API reference).
 *
 *	  stripe_customer  find the customer (by id, else metadata new_user_id
 *	                   search, else exact email), refuse a conflicting
 *	                   cello_ucc unless forced, set the metadata keys
 *	  stripe_payments  the customer's invoice.paid events inside the window,
 *	                   from the shared event index (eventindex.h), each to
 *	                   a stripe_resend step; its paid invoices older than
 *	                   the window go to the support report
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
#include "eventindex.h"
#include "json.h"
#include "providers.h"

#define PAGE_LIMIT "100"
/* pages of one customer's invoices read before the listing is deemed runaway */
#define MAX_PAGES 200
/* Stripe lists (and resends) the events of the last 30 days only */
#define EVENT_RETENTION_SECONDS (30 * SECS_PER_DAY)
/* Stripe documents no Retry-After default; back off a second */
#define STRIPE_RETRY_AFTER 1.0

typedef enum StripePhase
{
	FIND_BY_ID,
	FIND_BY_METADATA,
	FIND_BY_EMAIL,
	UPDATE_METADATA,
	LIST_INVOICES,
	RESEND
} StripePhase;

typedef struct StripeState
{
	StripePhase phase;
	char	   *customer;
	int64		customer_since; /* its created (unix s), 0 if unknown */
	int			pages;
	List	   *events;			/* IndexedEvent * inside the window */
	StringInfoData plan_too_old;	/* JSON array items */
} StripeState;

static char *
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

static HttpExchange *stripe_request(Job *job, const char *method,
									const char *path_fmt,...) pg_attribute_printf(3, 4);

/* A request to Stripe with its authentication; NULL (job failed) if unset. */
static HttpExchange *
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

/* ------------------------------------------------------ stripe_payments */

/* A page of the account's invoice.paid events, newest first (the index). */
static HttpExchange *
events_page_request(Job *job, int64 from, const char *cursor)
{
	return stripe_request(job, "GET",
						  "/v1/events?type=invoice.paid&created%%5Bgte%%5D=%lld&limit=" PAGE_LIMIT "%s%s",
						  (long long) from, cursor ? "&starting_after=" : "",
						  cursor ? url_escape(cursor) : "");
}

static void
list_invoices(Job *job, const char *starting_after)
{
	StripeState *st = state_of(job);
	HttpExchange *ex = stripe_request(job, "GET",
									  "/v1/invoices?customer=%s&status=paid&limit=" PAGE_LIMIT "%s%s",
									  url_escape(st->customer),
									  starting_after ? "&starting_after=" : "",
									  starting_after ? url_escape(starting_after) : "");

	if (ex)
	{
		st->phase = LIST_INVOICES;
		job_send(job, ex);
	}
}

/* Cello's interval for a Stripe recurring price (or plan). */
static const char *
line_interval(struct json_object *line)
{
	char	   *unit = json_string_at(line, "price.recurring.interval");
	int64		count = 1;

	if (unit == NULL)
		unit = json_string_at(line, "plan.interval");
	if (!json_int_at(line, "price.recurring.interval_count", &count))
		(void) json_int_at(line, "plan.interval_count", &count);
	return cello_interval(unit, count);
}

/* A paid invoice that cannot be resent: to the report, with its fields. */
static void
report_invoice(Job *job, struct json_object *invoice, int64 paid_at,
			   const char *reason)
{
	SupportItem *s = job_support(job, "invoice-paid", reason);
	struct json_object *line = json_item_at(invoice, "lines.data", 0);
	char	   *currency = json_string_at(invoice, "currency");
	int64		amount = 0;
	int64		quantity;
	StripeState *st = state_of(job);

	s->invoice_id = json_string_at(invoice, "id");
	s->has_timestamp = true;
	s->event_timestamp = time_t_to_timestamptz((pg_time_t) paid_at);
	(void) json_int_at(invoice, "amount_paid", &amount);
	if (currency)
	{
		s->currency = currency_code(currency);
		s->price = major_units(amount, currency);
	}
	s->subscription_id = json_string_at(invoice, "subscription");
	if (s->subscription_id == NULL)
		s->subscription_id = json_string_at(invoice, "subscription.id");
	if (line)
	{
		s->interval = line_interval(line);
		s->product_key = json_string_at(line, "price.nickname");
		if (s->product_key == NULL)
			s->product_key = json_string_at(line, "description");
		if (s->product_key == NULL)
			s->product_key = json_string_at(line, "price.product");
		if (json_int_at(line, "quantity", &quantity))
		{
			s->has_seats = true;
			s->seats = (int32) quantity;
		}
	}
	else
		s->interval = "one-time";
	appendStringInfo(&st->plan_too_old, "%s%s", st->plan_too_old.len ? ", " : "",
					 json_quote(s->invoice_id ? s->invoice_id : "?"));
}

/* Id of the last object of a list answer, for the next page. */
static char *
last_id(struct json_object *data)
{
	size_t		n = json_object_array_length(data);

	return n ? json_string_at(json_object_array_get_idx(data, n - 1), "id") : NULL;
}

static bool
list_has_more(struct json_object *answer)
{
	bool		more = false;

	return json_bool_at(answer, "has_more", &more) && more;
}

static bool
has_event_for(StripeState *st, const char *invoice)
{
	ListCell   *lc;

	foreach(lc, st->events)
		if (same(((IndexedEvent *) lfirst(lc))->invoice, invoice))
			return true;
	return false;
}

/*
 * Paid invoices: older than the window, or paid inside it but without an
 * event Stripe still lists (it keeps events 30 days), go to the report.
 * One paid after the index's coverage ends was paid after the customer got
 * the referral: Cello has seen it already.
 */
static void
read_invoices(Job *job, StripeState *st, struct json_object *data)
{
	int64		window_start = (int64) timestamptz_to_time_t(job_window_start());
	int64		covered_until = (int64) timestamptz_to_time_t(job->index->covered_until);
	size_t		n = json_object_array_length(data);

	for (size_t i = 0; i < n; i++)
	{
		struct json_object *invoice = json_object_array_get_idx(data, i);
		char	   *id = json_string_at(invoice, "id");
		int64		paid_at = 0;

		if (!json_int_at(invoice, "status_transitions.paid_at", &paid_at) &&
			!json_int_at(invoice, "created", &paid_at))
			continue;
		if (paid_at >= covered_until)
			continue;
		if (paid_at < window_start)
			report_invoice(job, invoice, paid_at, job_too_old_reason());
		else if (!has_event_for(st, id))
			report_invoice(job, invoice, paid_at,
						   "paid inside the window, but Stripe lists no invoice.paid event of it to resend");
	}
}

/* Every event to resend becomes a step of its own, with its own key. */
static void
plan_resends(Job *job, StripeState *st)
{
	StringInfoData plan;
	ListCell   *lc;

	initStringInfo(&plan);
	foreach(lc, st->events)
	{
		IndexedEvent *e = lfirst(lc);

		job_follow_up(job, "stripe_resend",
					  psprintf("{\"event\": %s, \"invoice\": %s, \"customer\": %s}",
							   json_quote(e->id), e->invoice ? json_quote(e->invoice) : "null",
							   json_quote(st->customer)),
					  e->id, true);
		appendStringInfo(&plan, "%s%s", plan.len ? ", " : "", json_quote(e->id));
	}
	job->plan = psprintf("{\"%s\": [%s], \"too_old_for_resend\": [%s]}",
						 job->dry_run ? "would_resend_events" : "resend_events",
						 plan.data, st->plan_too_old.data);
}

/*
 * Whether the customer's paid invoices must be listed: only one created
 * before the window, or before the events Stripe still lists, can have a
 * payment that no indexed event stands for.
 */
static bool
invoices_needed(StripeState *st)
{
	int64		now = (int64) timestamptz_to_time_t(GetCurrentTimestamp());
	int64		window_start = (int64) timestamptz_to_time_t(job_window_start());

	return st->customer_since <= 0 || st->customer_since < window_start ||
		st->customer_since < now - EVENT_RETENTION_SECONDS;
}

static void
payments_start(Job *job)
{
	StripeState *st = state_of(job);
	struct json_object *payload = json_parse(job->payload);
	TimestampTz window_start = job_window_start();
	ListCell   *lc;

	st->customer = json_string_at(payload, "customer");
	(void) json_int_at(payload, "customer_since", &st->customer_since);
	json_object_put(payload);
	initStringInfo(&st->plan_too_old);
	if (st->customer == NULL)
	{
		job_fail(job, "stripe_payments step without a customer in its payload");
		return;
	}
	if (!sweep_ready(job))
		return;

	/* the index covers the account up to the moment this step was queued */
	foreach(lc, job->index->events)
	{
		IndexedEvent *e = lfirst(lc);

		if (time_t_to_timestamptz((pg_time_t) e->occurred_at) >= window_start)
			st->events = lappend(st->events, e);
	}
	if (invoices_needed(st))
		list_invoices(job, NULL);
	else
	{
		plan_resends(job, st);
		job_done(job);
	}
}

/* The customer's paid invoices, one page at a time. */
static void
payments_response(Job *job, HttpExchange *ex)
{
	StripeState *st = state_of(job);
	struct json_object *answer;
	struct json_object *data;

	if (sweep_on_response(job, ex))
		return;
	if (!job_response_ok(job, ex, STRIPE_RETRY_AFTER, stripe_message))
		return;
	answer = json_parse(ex->response);
	data = json_at(answer, "data");
	if (data == NULL || !json_object_is_type(data, json_type_array))
	{
		job_retry(job, "Stripe answered %s without a data list", ex->url);
		json_object_put(answer);
		return;
	}
	if (++st->pages > MAX_PAGES)
	{
		job_fail(job, "Stripe kept paging past %d pages of %s", MAX_PAGES, ex->url);
		json_object_put(answer);
		return;
	}
	read_invoices(job, st, data);
	if (list_has_more(answer) && last_id(data))
		list_invoices(job, last_id(data));
	else
	{
		plan_resends(job, st);
		job_done(job);
	}
	json_object_put(answer);
}

/* The invoice.paid events of a page, for the index. */
static bool
read_events_page(struct json_object *answer, IndexPage *page)
{
	struct json_object *data = json_at(answer, "data");
	size_t		n;

	if (data == NULL || !json_object_is_type(data, json_type_array))
		return false;
	n = json_object_array_length(data);
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *event = json_object_array_get_idx(data, i);
		IndexedEvent *e = palloc0(sizeof(IndexedEvent));

		e->id = json_string_at(event, "id");
		e->customer = json_string_at(event, "data.object.customer");
		e->invoice = json_string_at(event, "data.object.id");
		if (e->id && e->customer && json_int_at(event, "created", &e->occurred_at))
			page->events = lappend(page->events, e);
	}
	page->next_cursor = list_has_more(answer) ? last_id(data) : NULL;
	return true;
}

static const IndexSource stripe_index = {
	.provider = "stripe", .events = "Stripe's invoice.paid events",
	.min_interval = 1, .retry_after = STRIPE_RETRY_AFTER, .message = stripe_message,
	.page_request = events_page_request, .read_page = read_events_page
};

const StepOps stripe_payments_step = {
	.kind = "stripe_payments", .provider = "stripe",
	.start = payments_start, .on_response = payments_response,
	.replay_safe = true, .index = &stripe_index
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
	state_of(job)->phase = RESEND;
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
