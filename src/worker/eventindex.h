/*-------------------------------------------------------------------------
 *
 * eventindex.h
 *	  The shared index of the providers' payment events
 *	  (celloattr.payment_events and celloattr.event_sweeps).
 *
 * Neither Stripe's nor Chargebee's event list filters on a customer, so a
 * repair that listed its customer's payments itself paged through every
 * payment event of the account in the window: users x (events / 100)
 * requests for a bulk repair.  Instead, one listing per provider fills an
 * index that every payment step reads.
 *
 * A payment step's claim (queue.c, eventindex.c) reads where the index
 * stands for it:
 *	- the index covers it (every event up to the moment the step was
 *	  queued, after its customer got the referral): the claim reads the
 *	  customer's events and the step plans from them, with no listing;
 *	- it does not, and no other step is reading the listing: this step
 *	  reads the listing's next page (starting a listing if none is in
 *	  progress), and its outcome writes the page's events and moves the
 *	  listing's cursor on, in the recording transaction (one page per run,
 *	  so pages are written as they arrive and a listing interrupted by a
 *	  fault or a kill goes on from its last page); the step is then due
 *	  again at once, no attempt used;
 *	- another step reads the listing: this one waits, and is woken when
 *	  the listing is complete.
 *
 * A listing keeps one window start for all its pages.  The first lists the
 * whole window; later ones only what is newer than the newest event
 * indexed, with an overlap at that boundary for events that become visible
 * late (the primary key makes the overlap harmless).  A listing covers
 * what was visible when it started, so an event paid while a listing runs
 * is caught by the next one.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CELLOATTR_EVENTINDEX_H
#define CELLOATTR_EVENTINDEX_H

#include "postgres.h"

#include "job.h"

/* A payment event, as the index holds it. */
typedef struct IndexedEvent
{
	char	   *id;
	char	   *customer;
	int64		occurred_at;	/* unix seconds */
	char	   *invoice;		/* or NULL */
	char	   *body;			/* the event's JSON where it is re-posted
								 * unchanged (Chargebee), else NULL */
} IndexedEvent;

typedef enum IndexRole
{
	INDEX_COVERED,				/* read the customer's events */
	INDEX_SWEEP,				/* read the listing's next page */
	INDEX_WAIT					/* wait for the listing */
} IndexRole;

/* What a payment step's claim read of the index. */
typedef struct IndexView
{
	IndexRole	role;

	/* INDEX_COVERED */
	List	   *events;			/* IndexedEvent * of the customer, newest
								 * first */
	TimestampTz covered_until;	/* events after this are not indexed yet */

	/* INDEX_SWEEP: the page to read */
	TimestampTz listing_from;	/* the listing's one window start */
	char	   *cursor;			/* NULL: its first page */
	int			pages;			/* read so far */

	/* INDEX_WAIT */
	double		wait_seconds;	/* at most: a complete listing wakes it */
	char	   *why;
} IndexView;

/* A page of the listing a step read, written with its outcome. */
typedef struct IndexPage
{
	TimestampTz listing_from;	/* the listing it belongs to */
	char	   *cursor;			/* where it was read (NULL: the first) */
	char	   *next_cursor;	/* NULL: the listing is complete */
	int			number;			/* 1 for the first page */
	List	   *events;			/* IndexedEvent * */
} IndexPage;

struct json_object;

/* What differs per provider: its event listing. */
typedef struct IndexSource
{
	const char *provider;		/* its row of celloattr.event_sweeps */
	const char *events;			/* for messages: "Stripe's invoice.paid events" */
	int			min_interval;	/* seconds between the end of a listing and
								 * the start of the next: a trickle of
								 * repairs takes a bounded share of the
								 * provider's rate limit */
	double		retry_after;	/* default for a 429 without Retry-After */
	char	   *(*message) (const char *body);	/* the provider's error text */

	/* The request for a page of the listing from `from` (unix seconds). */
	HttpExchange *(*page_request) (Job *job, int64 from, const char *cursor);

	/*
	 * Reads a page answer into page->events (payment events with a
	 * customer) and page->next_cursor (NULL on the last page); false if
	 * the answer holds no list.
	 */
	bool		(*read_page) (struct json_object *answer, IndexPage *page);
} IndexSource;

/* eventindex.c: in the worker's transactions (claim, recording). */
extern void index_attach(Job *job);
extern void index_record(Job **jobs, int njobs);

/*
 * sweep.c: in a payment step's own code.  sweep_ready() is true when the
 * claim found the index covering the step (job->index->events is what it
 * needs); otherwise it has sent the page request or settled the wait.
 * sweep_on_response() handles the answer to a page request (true), or
 * leaves an answer of the step's own requests to it (false).
 */
extern bool sweep_ready(Job *job);
extern bool sweep_on_response(Job *job, HttpExchange *exchange);

#endif							/* CELLOATTR_EVENTINDEX_H */
