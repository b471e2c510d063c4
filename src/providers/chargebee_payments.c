/*-------------------------------------------------------------------------
 *
 * chargebee_payments.c
 *	  The chargebee_payments step: the customer's payment_succeeded events
 *	  inside the window, read from the shared event index (eventindex.h),
 *	  each to a chargebee_redeliver step of its own; for a customer created
 *	  before the window, its older payments go to the support report.
 *
 * GET /events has no customer filter: the index lists the site's payments
 * once for every repair, and this step reads a page of that listing for
 * everyone when the index does not cover it yet (sweep.c).  The payments
 * older than the window are listed from the customer's creation on, and
 * filtered on the customer; a customer created inside the window has none.
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
/* pages of older events read for the support report (site-wide listing) */
#define MAX_OLD_PAGES 20

typedef struct PaymentsState
{
	char	   *customer;
	int64		customer_since; /* its created_at (unix s), 0 if unknown */
	int64		window_start;	/* unix s, fixed for the whole step */
	int			pages;
	StringInfoData plan_events; /* JSON array items */
	StringInfoData plan_too_old;
} PaymentsState;

static PaymentsState *
state_of(Job *job)
{
	if (job->state == NULL)
	{
		PaymentsState *st = palloc0(sizeof(PaymentsState));

		initStringInfo(&st->plan_events);
		initStringInfo(&st->plan_too_old);
		job->state = st;
	}
	return (PaymentsState *) job->state;
}

/* GET /events has no customer filter: whose payment an event is */
static const char *const customer_paths[] = {"content.customer.id",
	"content.transaction.customer_id", "content.invoice.customer_id", NULL};

/* A listing of payment_succeeded events from filter on. */
static HttpExchange *
events_request(Job *job, const char *filter, const char *offset)
{
	return chargebee_request(job, "GET",
							 "/events?event_type%%5Bis%%5D=payment_succeeded&%s&limit=" PAGE_LIMIT "%s%s",
							 filter, offset ? "&offset=" : "", offset ? url_escape(offset) : "");
}

/* A page of the site's payments since from, oldest first (the index). */
static HttpExchange *
events_page_request(Job *job, int64 from, const char *cursor)
{
	return events_request(job,
						  psprintf("occurred_at%%5Bafter%%5D=%lld&sort_by%%5Basc%%5D=occurred_at",
								   (long long) from),
						  cursor);
}

/* The payments older than the window, from the customer's creation on,
 * newest first: for the report. */
static void
list_old_events(Job *job, const char *offset)
{
	PaymentsState    *st = state_of(job);

	HttpExchange *ex = events_request(job,
									  psprintf("occurred_at%%5Bbetween%%5D=%s&sort_by%%5Bdesc%%5D=occurred_at",
											   url_escape(psprintf("[%lld,%lld]", (long long) st->customer_since,
																   (long long) st->window_start))),
									  offset);

	if (ex)
		job_send(job, ex);
}

/* The plan: what is re-delivered (or would be), what goes to the report. */
static void
plan_payments(Job *job, PaymentsState *st, bool cut_short)
{
	job->plan = psprintf("{\"%s\": [%s], \"too_old_for_redelivery\": [%s]%s}",
						 job->dry_run ? "would_redeliver_events" : "redeliver_events",
						 st->plan_events.data, st->plan_too_old.data,
						 cut_short ? psprintf(", \"older_payments_not_all_listed\": \"stopped after %d pages\"",
											  MAX_OLD_PAGES) : "");
	job_done(job);
}

static void
payments_start(Job *job)
{
	PaymentsState    *st = state_of(job);
	struct json_object *payload = json_parse(job->payload);

	st->customer = json_string_at(payload, "customer");
	(void) json_int_at(payload, "customer_since", &st->customer_since);
	st->window_start = (int64) timestamptz_to_time_t(job_window_start());
	json_object_put(payload);
	if (st->customer == NULL)
	{
		job_fail(job, "chargebee_payments step without a customer in its payload");
		return;
	}
	if (!sweep_ready(job))
		return;

	/* the index covers the site up to the moment this step was queued; oldest first */
	for (int i = list_length(job->index->events) - 1; i >= 0; i--)
	{
		IndexedEvent *e = list_nth(job->index->events, i);

		/* older ones are listed with the customer's others, below */
		if (e->occurred_at <= st->window_start)
			continue;
		/* the event itself is the payload: it is re-posted unchanged */
		job_follow_up(job, "chargebee_redeliver",
					  psprintf("{\"event\": %s}", e->body), e->id, true);
		appendStringInfo(&st->plan_events, "%s%s", st->plan_events.len ? ", " : "",
						 json_quote(e->id));
	}
	/* a customer created inside the window paid nothing before it */
	if (st->customer_since > 0 && st->customer_since >= st->window_start)
		plan_payments(job, st, false);
	else
		list_old_events(job, NULL);
}

/* A payment too old to replay: to the report with its event's fields. */
static void
report_payment(Job *job, struct json_object *event, int64 occurred_at)
{
	static const char *const currency_paths[] = {"content.transaction.currency_code",
		"content.invoice.currency_code", NULL};
	static const char *const invoice_paths[] = {"content.invoice.id",
		"content.transaction.linked_invoices.0.invoice_id", "content.transaction.id", NULL};
	static const char *const subscription_paths[] = {"content.subscription.id",
		"content.transaction.subscription_id", "content.invoice.subscription_id", NULL};
	static const char *const product_paths[] = {"content.invoice.line_items.0.description",
		"content.subscription.plan_id", "content.subscription.subscription_items.0.item_price_id", NULL};
	PaymentsState    *st = state_of(job);
	struct json_object *content = json_at(event, "content");
	SupportItem *s;
	char	   *currency;
	int64		amount;
	int64		count = 1;
	int64		seats;

	s = job_support(job, "invoice-paid", job_too_old_reason());
	s->has_timestamp = true;
	s->event_timestamp = time_t_to_timestamptz((pg_time_t) occurred_at);
	currency = json_first_string(event, currency_paths);
	if (currency)
		s->currency = currency_code(currency);
	if (json_int_at(content, "transaction.amount", &amount) ||
		json_int_at(content, "invoice.amount_paid", &amount))
		s->price = major_units(amount, currency);
	s->invoice_id = json_first_string(event, invoice_paths);
	if (s->invoice_id == NULL)
		s->invoice_id = json_string_at(event, "id");
	s->subscription_id = json_first_string(event, subscription_paths);
	s->product_key = json_first_string(event, product_paths);
	(void) json_int_at(content, "subscription.billing_period", &count);
	s->interval = cello_interval(json_string_at(content, "subscription.billing_period_unit"), count);
	if (json_int_at(content, "subscription.plan_quantity", &seats) ||
		json_int_at(content, "subscription.subscription_items.0.quantity", &seats))
	{
		s->has_seats = true;
		s->seats = (int32) seats;
	}
	appendStringInfo(&st->plan_too_old, "%s%s", st->plan_too_old.len ? ", " : "",
					 json_quote(json_string_at(event, "id") ? json_string_at(event, "id") : "?"));
}

/* The customer's events of a page of older payments: to the report. */
static void
read_old_events(Job *job, PaymentsState *st, struct json_object *list)
{
	size_t		n = json_object_array_length(list);

	for (size_t i = 0; i < n; i++)
	{
		struct json_object *event = json_at(json_object_array_get_idx(list, i), "event");
		char	   *id = json_string_at(event, "id");
		int64		occurred_at = 0;

		if (id != NULL && same(json_first_string(event, customer_paths), st->customer) &&
			json_int_at(event, "occurred_at", &occurred_at))
			report_payment(job, event, occurred_at);
	}
}

static void
payments_response(Job *job, HttpExchange *ex)
{
	PaymentsState    *st = state_of(job);
	struct json_object *answer;
	struct json_object *list;
	char	   *next;

	if (sweep_on_response(job, ex))
		return;
	if (!job_response_ok(job, ex, CHARGEBEE_RETRY_AFTER, chargebee_message))
		return;
	answer = json_parse(ex->response);
	list = json_at(answer, "list");
	if (list == NULL || !json_object_is_type(list, json_type_array))
	{
		job_retry(job, "Chargebee answered %s without a list", ex->url);
		json_object_put(answer);
		return;
	}
	st->pages++;
	read_old_events(job, st, list);
	next = json_string_at(answer, "next_offset");
	json_object_put(answer);

	if (next && st->pages < MAX_OLD_PAGES)
		list_old_events(job, next);
	else
		plan_payments(job, st, next != NULL);
}

/* The payment_succeeded events of a page, for the index. */
static bool
read_events_page(struct json_object *answer, IndexPage *page)
{
	struct json_object *list = json_at(answer, "list");
	size_t		n;

	if (list == NULL || !json_object_is_type(list, json_type_array))
		return false;
	n = json_object_array_length(list);
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *event = json_at(json_object_array_get_idx(list, i), "event");
		IndexedEvent *e = palloc0(sizeof(IndexedEvent));

		e->id = json_string_at(event, "id");
		e->customer = json_first_string(event, customer_paths);
		e->invoice = json_string_at(event, "content.invoice.id");
		if (e->id && e->customer && json_int_at(event, "occurred_at", &e->occurred_at))
		{
			e->body = json_text(event);
			page->events = lappend(page->events, e);
		}
	}
	page->next_cursor = json_string_at(answer, "next_offset");
	return true;
}

static const IndexSource chargebee_index = {
	.provider = "chargebee", .events = "Chargebee's payment_succeeded events",
	.min_interval = 10, .retry_after = CHARGEBEE_RETRY_AFTER, .message = chargebee_message,
	.page_request = events_page_request, .read_page = read_events_page
};

const StepOps chargebee_payments_step = {
	.kind = "chargebee_payments", .provider = "chargebee",
	.start = payments_start, .on_response = payments_response,
	.replay_safe = true, .index = &chargebee_index
};
