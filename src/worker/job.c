/*-------------------------------------------------------------------------
 *
 * job.c
 *	  The machinery every provider's steps share: the step registry,
 *	  issuing requests, classifying answers, recording what was learned.
 *
 * Classification follows the providers' documented error semantics:
 * transport errors, 5xx and 409 (a concurrent request with the same
 * idempotency key) are transient;
 * 429 is waited out for Retry-After without using an attempt; any other
 * 4xx is final and keeps the provider's own message.  Stripe may say
 * "Stripe-Should-Retry: false" on a 5xx: its idempotency layer would only
 * replay the same failure, so that one is final too.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "mb/pg_wchar.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "job.h"
#include "json.h"
#include "providers.h"

/* Longest message kept for a step's verdict (bytes). */
#define MAX_MESSAGE_BYTES 1024

/* Longest we believe a Retry-After: a day. */
#define MAX_RETRY_AFTER_SECONDS 86400.0

static const StepOps *const steps[] = {
	&stripe_customer_step,
	&stripe_payments_step,
	&stripe_resend_step,
	&chargebee_customer_step,
	&chargebee_payments_step,
	&chargebee_redeliver_step,
	&cello_signup_step,
	&cello_transaction_step,
	NULL
};

const StepOps *
job_step_ops(const char *kind)
{
	for (int i = 0; steps[i]; i++)
		if (strcmp(steps[i]->kind, kind) == 0)
			return steps[i];
	return NULL;
}

void
job_unrepeatable_kinds(ArrayColumn *kinds)
{
	for (int i = 0; steps[i]; i++)
		if (!steps[i]->replay_safe)
			celloattr_column_text(kinds, steps[i]->kind);
}

HttpExchange *
job_request(Job *job, const char *method, const char *url)
{
	HttpExchange *ex = MemoryContextAllocZero(job->cxt, sizeof(HttpExchange));

	ex->provider = job->ops->provider;
	ex->method = method;
	ex->url = MemoryContextStrdup(job->cxt, url);
	ex->owner = job;
	return ex;
}

void
job_send(Job *job, HttpExchange *exchange)
{
	job->pending = exchange;
	job->verdict = JOB_RUNNING;
	job->exchanges = lappend(job->exchanges, exchange);
}

HttpExchange *
job_requestv(Job *job, const char *method, const char *base,
			 const char *path_fmt, va_list args)
{
	StringInfoData url;

	initStringInfo(&url);
	appendStringInfoString(&url, base_url(base));
	for (;;)
	{
		va_list		copy;
		int			needed;

		va_copy(copy, args);
		needed = appendStringInfoVA(&url, path_fmt, copy);
		va_end(copy);
		if (needed == 0)
			break;
		enlargeStringInfo(&url, needed);
	}
	return job_request(job, method, url.data);
}

HttpExchange *
job_requestf(Job *job, const char *method, const char *base,
			 const char *path_fmt,...)
{
	HttpExchange *ex;
	va_list		args;

	va_start(args, path_fmt);
	ex = job_requestv(job, method, base, path_fmt, args);
	va_end(args);
	return ex;
}

char *
job_payload_string(Job *job, const char *key)
{
	struct json_object *payload = json_parse(job->payload);
	char	   *value = json_string_at(payload, key);

	json_object_put(payload);
	return value;
}

void
job_done(Job *job)
{
	job->verdict = JOB_DONE;
}

/* Settle the verdict with a message (kept in the job's context). */
static void
settle(Job *job, JobVerdict verdict, const char *fmt, va_list args)
pg_attribute_printf(3, 0);

static void
settle(Job *job, JobVerdict verdict, const char *fmt, va_list args)
{
	StringInfoData buf;
	MemoryContext old = MemoryContextSwitchTo(job->cxt);

	initStringInfo(&buf);
	for (;;)
	{
		va_list		copy;
		int			needed;

		va_copy(copy, args);
		needed = appendStringInfoVA(&buf, fmt, copy);
		va_end(copy);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	/* a message quoting a provider stays short; cut between characters */
	if (buf.len > MAX_MESSAGE_BYTES)
	{
		buf.len = pg_encoding_mbcliplen(PG_UTF8, buf.data, buf.len, MAX_MESSAGE_BYTES);
		buf.data[buf.len] = '\0';
		appendStringInfoString(&buf, "...");
	}
	job->verdict = verdict;
	job->error = buf.data;
	MemoryContextSwitchTo(old);
}

void
job_fail(Job *job, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	settle(job, JOB_FAILED, fmt, args);
	va_end(args);
}

void
job_retry(Job *job, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	settle(job, JOB_RETRY, fmt, args);
	va_end(args);
}

void
job_snooze(Job *job, double seconds, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	settle(job, JOB_SNOOZE, fmt, args);
	va_end(args);
	job->snooze_seconds = seconds;
}

/* Retry-After in seconds (the HTTP-date form is rare; use the default). */
static double
retry_after_seconds(const char *value, double fallback)
{
	char	   *end;
	double		s;

	if (value == NULL)
		return fallback;
	s = strtod(value, &end);
	if (end == value || *end != '\0' || s < 0 || isnan(s))
		return fallback;
	return Min(s, MAX_RETRY_AFTER_SECONDS);
}

bool
job_unsure_if_sent(Job *job, HttpExchange *ex)
{
	if (!ex->unrepeatable || !ex->may_have_arrived || ex->resource_error)
		return false;
	job_fail(job, "set aside: %s %s failed after the request went out (%s), so %s may have "
			 "taken it, and it carries no idempotency key: sending it again could count "
			 "the event twice; check %s's records, then celloattr.retry(%lld) sends it again",
			 ex->method, ex->url, ex->error, ex->provider, ex->provider,
			 (long long) job->attribution_id);
	return true;
}

bool
job_response_ok(Job *job, HttpExchange *ex, double default_retry_after,
				char *(*provider_message) (const char *body))
{
	char	   *message;

	job->last_status = ex->status;
	if (ex->error != NULL)
	{
		if (job_unsure_if_sent(job, ex))
			return false;
		job_retry(job, "%s %s: %s", ex->method, ex->url, ex->error);
		return false;
	}
	if (ex->status >= 200 && ex->status < 300)
		return true;

	message = provider_message(ex->response);
	if (message == NULL)
		message = psprintf("HTTP %ld", ex->status);

	if (ex->status == 429)
	{
		job->verdict = JOB_SNOOZE;
		job->snooze_seconds = retry_after_seconds(ex->retry_after, default_retry_after);
		job->error = psprintf("rate limited by %s (HTTP 429): %s",
							  ex->provider, message);
	}
	else if (ex->status >= 500 || ex->status == 409)
	{
		if (ex->should_retry && pg_strcasecmp(ex->should_retry, "false") == 0)
			job_fail(job, "%s answered HTTP %ld and asked not to retry: %s",
					 ex->provider, ex->status, message);
		else
			job_retry(job, "%s answered HTTP %ld: %s", ex->provider,
					  ex->status, message);
	}
	else
		job_fail(job, "%s answered HTTP %ld: %s", ex->provider, ex->status,
				 message);
	return false;
}

struct json_object *
job_only_customer(Job *job, const char *provider, struct json_object *answer,
				  const char *list_key, const char *item_path, const char *how)
{
	struct json_object *list = json_at(answer, list_key);
	size_t		n;

	if (list == NULL || !json_object_is_type(list, json_type_array))
	{
		job_fail(job, "%s answered a customer %s without a %s list", provider, how, list_key);
		return NULL;
	}
	n = json_object_array_length(list);
	if (n > 1)
	{
		job_fail(job, "several %s customers match %s (%s); pass customer_id to choose one",
				 provider, how,
				 json_list_ids(list, item_path[0] ? psprintf("%s.id", item_path) : "id"));
		return NULL;
	}
	return n == 1 ? json_at(json_object_array_get_idx(list, 0), item_path) : NULL;
}

void
job_follow_up(Job *job, const char *kind, char *payload, char *key_suffix,
			  bool mutates)
{
	FollowUp   *f = MemoryContextAllocZero(job->cxt, sizeof(FollowUp));

	f->kind = kind;
	f->payload = payload;
	f->key_suffix = key_suffix;
	f->mutates = mutates;
	job->follow_ups = lappend(job->follow_ups, f);
}

SupportItem *
job_support(Job *job, const char *trigger, const char *reason)
{
	SupportItem *s = MemoryContextAllocZero(job->cxt, sizeof(SupportItem));

	s->trigger = trigger;
	s->reason = MemoryContextStrdup(job->cxt, reason);
	job->support = lappend(job->support, s);
	return s;
}

TimestampTz
job_window_start(void)
{
	return GetCurrentTimestamp() - (TimestampTz) celloattr_transaction_window * USECS_PER_SEC;
}

char *
job_too_old_reason(void)
{
	return psprintf("paid before the transaction window (%d days): Cello imports only recent transactions of a manual attribution",
					celloattr_transaction_window / SECS_PER_DAY);
}
