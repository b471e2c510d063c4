/*-------------------------------------------------------------------------
 *
 * sweep.c
 *	  A payment step's side of the shared event index (eventindex.h):
 *	  before it plans from its customer's indexed events, it may have to
 *	  read a page of the provider's event listing for every repair, or
 *	  wait while another step does.
 *
 * A page is one run of the step: the answer is kept on the job
 * (job->index_page) and written with its outcome by the recording
 * transaction (eventindex.c), then the step is due again at once without
 * using an attempt.  A 429 or 5xx on a page is the step's own verdict as
 * for any request: it is waited out or retried, and the listing goes on
 * from the same page.
 *
 * The provider's listing (its URL, cursor and the shape of its answer) is
 * the provider module's IndexSource; nothing here knows a provider.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "eventindex.h"
#include "json.h"

bool
sweep_ready(Job *job)
{
	const IndexSource *src = job->ops->index;
	IndexView  *view = job->index;
	HttpExchange *ex;

	if (view == NULL)
		elog(ERROR, "celloattr: step %s was claimed without reading the event index",
			 job->kind);
	switch (view->role)
	{
		case INDEX_COVERED:
			return true;
		case INDEX_WAIT:
			/* no attempt used: nothing was asked of the provider */
			job_snooze(job, view->wait_seconds, "waiting for the index of %s: %s",
					   src->events, view->why);
			break;
		case INDEX_SWEEP:
			ex = src->page_request(job, (int64) timestamptz_to_time_t(view->listing_from),
								   view->cursor);
			/* NULL: the request could not be made, and the step failed */
			if (ex)
				job_send(job, ex);
			break;
	}
	return false;
}

bool
sweep_on_response(Job *job, HttpExchange *ex)
{
	const IndexSource *src = job->ops->index;
	IndexView  *view = job->index;
	struct json_object *answer;
	IndexPage  *page;

	if (view == NULL || view->role != INDEX_SWEEP)
		return false;
	if (!job_response_ok(job, ex, src->retry_after, src->message))
		return true;

	page = palloc0(sizeof(IndexPage));
	page->listing_from = view->listing_from;
	page->cursor = view->cursor;
	page->number = view->pages + 1;
	answer = json_parse(ex->response);
	if (answer == NULL || !src->read_page(answer, page))
		job_retry(job, "%s answered %s without a list of events", ex->provider, ex->url);
	else
	{
		job->index_page = page;
		job_snooze(job, 0, "read page %d of the listing of %s since %s (%d in the page)%s",
				   page->number, src->events, timestamptz_to_str(page->listing_from),
				   list_length(page->events),
				   page->next_cursor ? "; the next page follows" : "; the listing is complete");
	}
	json_object_put(answer);
	return true;
}
