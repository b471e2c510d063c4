/*-------------------------------------------------------------------------
 *
 * stripe_payments.c
 *	  The stripe_payments step: the customer's invoice.paid events inside
 *	  the window, read from the shared event index (eventindex.h), each to a
 *	  stripe_resend step of its own; its paid invoices older than the window
 *	  go to the support report, with the fields of the event they stand for.
 *
 * Stripe's event list cannot filter on a customer: the index lists the
 * account's events once for every repair, and this step reads a page of
 * that listing for everyone when the index does not cover it yet
 * (sweep.c).  The customer's paid invoices are listed only when one can be
 * older than the window, or than the 30 days of events Stripe keeps: for a
 * customer created before either.
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

typedef struct PaymentsState
{
	char	   *customer;
	int64		customer_since; /* its created (unix s), 0 if unknown */
	int			pages;
	List	   *events;			/* IndexedEvent * inside the window */
	StringInfoData plan_too_old;	/* JSON array items */
} PaymentsState;

static PaymentsState *
state_of(Job *job)
{
	if (job->state == NULL)
		job->state = palloc0(sizeof(PaymentsState));
	return (PaymentsState *) job->state;
}

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
	PaymentsState *st = state_of(job);
	HttpExchange *ex = stripe_request(job, "GET",
									  "/v1/invoices?customer=%s&status=paid&limit=" PAGE_LIMIT "%s%s",
									  url_escape(st->customer),
									  starting_after ? "&starting_after=" : "",
									  starting_after ? url_escape(starting_after) : "");

	if (ex)
		job_send(job, ex);
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
	PaymentsState *st = state_of(job);

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
has_event_for(PaymentsState *st, const char *invoice)
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
read_invoices(Job *job, PaymentsState *st, struct json_object *data)
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
plan_resends(Job *job, PaymentsState *st)
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
invoices_needed(PaymentsState *st)
{
	int64		now = (int64) timestamptz_to_time_t(GetCurrentTimestamp());
	int64		window_start = (int64) timestamptz_to_time_t(job_window_start());

	return st->customer_since <= 0 || st->customer_since < window_start ||
		st->customer_since < now - EVENT_RETENTION_SECONDS;
}

static void
payments_start(Job *job)
{
	PaymentsState *st = state_of(job);
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
	PaymentsState *st = state_of(job);
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
