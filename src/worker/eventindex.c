/*-------------------------------------------------------------------------
 *
 * eventindex.c
 *	  The shared index of the providers' payment events, as the worker's
 *	  transactions read and write it (eventindex.h says what it is for).
 *
 *	  index_attach()  in the claim of a payment step: does the index cover
 *	                  the step?  Then the customer's events; else the
 *	                  listing's next page for it to read, or a wait
 *	  index_record()  in the recording of outcomes: the page a step read,
 *	                  its events written and the listing moved on; at the
 *	                  listing's end, what it covers, the waiting steps
 *	                  woken and the events that left the window deleted
 *
 * One step at a time reads a listing (event_sweeps.swept_by): its row is
 * locked while a claim decides, and a page moves the listing on only if
 * that step still reads it from where the page was read, so a page that
 * comes back late can never move the cursor back.  Its events are written
 * in any case; the primary key keeps each event once.
 *
 * Table locks are conditional and row locks skip what others hold, as in
 * the worker's other transactions (queue.c): a DBA holding the index's
 * tables makes payment steps wait, never the worker.  Functions are named
 * with pg_catalog; operators resolve through the pinned search_path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "celloattr.h"
#include "dbtext.h"
#include "eventindex.h"

/*
 * A listing covers what was visible when it started, less this margin
 * (seconds) for an event the provider lists a moment late; a step may
 * start a listing only this long after it was queued.
 */
#define COVERAGE_MARGIN 1

/*
 * A later listing starts this far (seconds) before the newest event
 * indexed: an event that becomes visible late, with an older timestamp,
 * is still listed.  Events listed twice are indexed once.
 */
#define LISTING_OVERLAP 300

/* Seconds a step waits for a listing another step reads; a complete
 * listing wakes it sooner (this only bounds a wake that was missed). */
#define WAIT_FOR_LISTING 30

/* Seconds a step waits when the index's tables or row are held. */
#define WAIT_FOR_LOCK 1

static SPIPlanPtr sweep_plan = NULL;
static SPIPlanPtr remake_plan = NULL;
static SPIPlanPtr events_plan = NULL;
static SPIPlanPtr waiter_plan = NULL;
static SPIPlanPtr take_plan = NULL;
static SPIPlanPtr start_plan = NULL;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr advance_plan = NULL;
static SPIPlanPtr expire_plan = NULL;

/* Lock the index's tables if that can be done at once. */
static bool
lock_index(void)
{
	Oid			nsp = get_namespace_oid("celloattr", true);
	Oid			events;
	Oid			sweeps;

	if (!OidIsValid(nsp))
		return false;
	events = get_relname_relid("payment_events", nsp);
	sweeps = get_relname_relid("event_sweeps", nsp);
	return OidIsValid(events) && OidIsValid(sweeps) &&
		ConditionalLockRelationOid(sweeps, RowExclusiveLock) &&
		ConditionalLockRelationOid(events, RowExclusiveLock);
}

static TimestampTz
time_at(HeapTuple tuple, TupleDesc desc, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(tuple, desc, col, isnull);

	return *isnull ? 0 : DatumGetTimestampTz(d);
}

/* A view that makes the step wait (allocated in the current context). */
static IndexView *
wait_view(double seconds, char *why)
{
	IndexView  *view = palloc0(sizeof(IndexView));

	view->role = INDEX_WAIT;
	view->wait_seconds = Max(seconds, 0.0);
	view->why = why;
	return view;
}

/* The customer's indexed events, newest first, for a covered step. */
static IndexView *
covered_view(const char *provider, const char *customer, TimestampTz covered_until,
			 MemoryContext keep)
{
	Datum		values[2];
	char		nulls[2];
	IndexView  *view;
	MemoryContext old;

	values[0] = celloattr_text_datum(provider, &nulls[0]);
	values[1] = celloattr_text_datum(customer, &nulls[1]);
	celloattr_prepare(&events_plan,
			"SELECT event_id, customer_id, EXTRACT(epoch FROM occurred_at)::int8, invoice_id, event"
			"  FROM celloattr.payment_events"
			" WHERE provider = $1 AND customer_id = $2"
			" ORDER BY occurred_at DESC, event_id",
			2, (Oid[]) {TEXTOID, TEXTOID});
	celloattr_execute(events_plan, values, nulls, SPI_OK_SELECT);

	old = MemoryContextSwitchTo(keep);
	view = palloc0(sizeof(IndexView));
	view->role = INDEX_COVERED;
	view->covered_until = covered_until;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		IndexedEvent *e = palloc0(sizeof(IndexedEvent));
		bool		isnull;

		e->id = worker_text(SPI_getvalue(tuple, desc, 1));
		e->customer = worker_text(SPI_getvalue(tuple, desc, 2));
		e->occurred_at = DatumGetInt64(SPI_getbinval(tuple, desc, 3, &isnull));
		e->invoice = worker_text(SPI_getvalue(tuple, desc, 4));
		e->body = worker_text(SPI_getvalue(tuple, desc, 5));
		view->events = lappend(view->events, e);
	}
	MemoryContextSwitchTo(old);
	return view;
}

/* index_attach() without the error handling; the view in job->cxt. */
static IndexView *
attach(Job *job)
{
	const IndexSource *src = job->ops->index;
	Datum		values[4];
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	bool		no_coverage;
	bool		no_listing;
	bool		no_high_water;
	bool		never_finished;
	TimestampTz covered_from;
	TimestampTz covered_until;
	TimestampTz high_water;
	TimestampTz finished_at;
	TimestampTz listing_from;
	TimestampTz created_at;
	TimestampTz now;
	TimestampTz window_start = job_window_start();
	TimestampTz ready_at;
	int64		holder;
	bool		held;
	char	   *customer;
	char	   *cursor;
	int			pages;
	MemoryContext old;
	IndexView  *view;

	old = MemoryContextSwitchTo(job->cxt);
	if (!lock_index())
	{
		view = wait_view(WAIT_FOR_LOCK, "its tables are locked by another session");
		MemoryContextSwitchTo(old);
		return view;
	}
	MemoryContextSwitchTo(old);

	values[0] = Int64GetDatum(job->id);
	values[1] = CStringGetTextDatum(src->provider);
	celloattr_prepare(&sweep_plan,
			"SELECT s.covered_from, s.covered_until, s.high_water, s.finished_at,"
			"       s.listing_from, s.cursor, s.pages, s.swept_by,"
			"       s.swept_by IS NOT NULL AND s.swept_by <> j.id AND EXISTS ("
			"         SELECT 1 FROM celloattr.jobs h"
			"          WHERE h.id = s.swept_by AND h.state IN ('queued', 'running')),"
			"       j.created_at, j.payload->>'customer', pg_catalog.now()"
			"  FROM celloattr.event_sweeps s, celloattr.jobs j"
			" WHERE s.provider = $2 AND j.id = $1"
			"   FOR UPDATE OF s SKIP LOCKED",
			2, (Oid[]) {INT8OID, TEXTOID});
	celloattr_execute(sweep_plan, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
	{
		/* its row is held by someone, or was deleted: made again if so */
		celloattr_prepare(&remake_plan,
				"INSERT INTO celloattr.event_sweeps (provider) VALUES ($1) ON CONFLICT DO NOTHING",
				1, (Oid[]) {TEXTOID});
		celloattr_execute(remake_plan, &values[1], NULL, SPI_OK_INSERT);
		old = MemoryContextSwitchTo(job->cxt);
		view = wait_view(WAIT_FOR_LOCK, psprintf("its row of celloattr.event_sweeps (%s) is locked by another session",
												 src->provider));
		MemoryContextSwitchTo(old);
		return view;
	}

	tuple = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	covered_from = time_at(tuple, desc, 1, &no_coverage);
	covered_until = time_at(tuple, desc, 2, &isnull);
	no_coverage = no_coverage || isnull;
	high_water = time_at(tuple, desc, 3, &no_high_water);
	finished_at = time_at(tuple, desc, 4, &never_finished);
	listing_from = time_at(tuple, desc, 5, &no_listing);
	cursor = SPI_getvalue(tuple, desc, 6);
	pages = DatumGetInt32(SPI_getbinval(tuple, desc, 7, &isnull));
	holder = DatumGetInt64(SPI_getbinval(tuple, desc, 8, &isnull));
	held = DatumGetBool(SPI_getbinval(tuple, desc, 9, &isnull));
	created_at = time_at(tuple, desc, 10, &isnull);
	customer = SPI_getvalue(tuple, desc, 11);
	now = time_at(tuple, desc, 12, &isnull);

	/* everything up to the moment the step was queued, in the whole window */
	if (!no_coverage && covered_from <= window_start && covered_until >= created_at)
		return covered_view(src->provider, customer, covered_until, job->cxt);

	if (held)
	{
		/* woken when that listing is complete */
		celloattr_prepare(&waiter_plan,
				"UPDATE celloattr.event_sweeps"
				"   SET waiters = CASE WHEN $1 = ANY (waiters) THEN waiters ELSE waiters || $1 END"
				" WHERE provider = $2",
				2, (Oid[]) {INT8OID, TEXTOID});
		celloattr_execute(waiter_plan, values, NULL, SPI_OK_UPDATE);
		old = MemoryContextSwitchTo(job->cxt);
		view = wait_view(WAIT_FOR_LISTING,
						 psprintf("step %lld reads the listing since %s (page %d read)",
								  (long long) holder,
								  no_listing ? "?" : timestamptz_to_str(listing_from), pages));
		MemoryContextSwitchTo(old);
		return view;
	}

	if (no_listing)
	{
		bool		full = no_coverage || covered_from > window_start;

		ready_at = created_at + (TimestampTz) COVERAGE_MARGIN * USECS_PER_SEC;
		if (!never_finished)
			ready_at = Max(ready_at, finished_at + (TimestampTz) src->min_interval * USECS_PER_SEC);
		if (now < ready_at)
		{
			old = MemoryContextSwitchTo(job->cxt);
			view = wait_view((ready_at - now) / 1e6,
							 psprintf("the next listing starts at %s (at most one every %d s)",
									  timestamptz_to_str(ready_at), src->min_interval));
			MemoryContextSwitchTo(old);
			return view;
		}
		/* the whole window, or what is newer than the newest event indexed */
		listing_from = window_start;
		if (!full)
			listing_from = Max(window_start,
							   (no_high_water ? covered_until : high_water) -
							   (TimestampTz) LISTING_OVERLAP * USECS_PER_SEC);
		values[2] = TimestampTzGetDatum(listing_from);
		values[3] = BoolGetDatum(full);
		celloattr_prepare(&start_plan,
				"UPDATE celloattr.event_sweeps"
				"   SET listing_from = $3, listing_started_at = pg_catalog.now(), listing_full = $4,"
				"       cursor = NULL, pages = 0, swept_by = $1"
				" WHERE provider = $2",
				4, (Oid[]) {INT8OID, TEXTOID, TIMESTAMPTZOID, BOOLOID});
		celloattr_execute(start_plan, values, NULL, SPI_OK_UPDATE);
		cursor = NULL;
		pages = 0;
	}
	else
	{
		/* in progress, and nobody reads it: this step goes on with it */
		celloattr_prepare(&take_plan,
				"UPDATE celloattr.event_sweeps SET swept_by = $1 WHERE provider = $2",
				2, (Oid[]) {INT8OID, TEXTOID});
		celloattr_execute(take_plan, values, NULL, SPI_OK_UPDATE);
	}

	old = MemoryContextSwitchTo(job->cxt);
	view = palloc0(sizeof(IndexView));
	view->role = INDEX_SWEEP;
	view->listing_from = listing_from;
	view->cursor = cursor ? worker_text(cursor) : NULL;
	view->pages = pages;
	MemoryContextSwitchTo(old);
	return view;
}

/*
 * Read where the index stands for a payment step (in its claim's
 * transaction).  An error is no reason to hold up the claim: it is
 * logged, rolled back (a subtransaction), and the step waits.
 */
void
index_attach(Job *job)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	IndexView  *volatile view = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		view = attach(job);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(cxt);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(LOG,
				(errmsg("celloattr worker: step %lld could not read the event index of %s; it waits",
						(long long) job->id, job->ops->index->provider),
				 errdetail("%s", error->message)));
		MemoryContextSwitchTo(job->cxt);
		view = wait_view(WAIT_FOR_LOCK, psprintf("it could not be read: %s", error->message));
		FreeErrorData(error);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	job->index = view;
}

/* The page's events, written once each. */
static void
insert_events(const char *provider, IndexPage *page)
{
	static const Oid types[6] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID};
	ArrayColumn cols[6];
	ListCell   *lc;

	if (page->events == NIL)
		return;
	celloattr_columns_init(cols, types, lengthof(cols), list_length(page->events));
	foreach(lc, page->events)
	{
		IndexedEvent *e = lfirst(lc);

		celloattr_column_text(&cols[0], provider);
		celloattr_column_text(&cols[1], db_text(e->id));
		celloattr_column_text(&cols[2], db_text(e->customer));
		celloattr_column_add(&cols[3],
							 TimestampTzGetDatum(time_t_to_timestamptz((pg_time_t) e->occurred_at)),
							 false);
		celloattr_column_text(&cols[4], db_text(e->invoice));
		/* valid JSON in any encoding: it becomes a step's jsonb payload */
		celloattr_column_text(&cols[5], db_json(e->body));
	}
	celloattr_execute_columns(&insert_plan,
			"INSERT INTO celloattr.payment_events (provider, event_id, customer_id, occurred_at,"
			"  invoice_id, event)"
			" SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
			"                          pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6))"
			" ON CONFLICT (provider, event_id) DO NOTHING",
			cols, lengthof(cols), SPI_OK_INSERT);
}

/*
 * Move the listing on from the page (if the step still reads it, from
 * where the page was read).  On its last page the listing is complete:
 * what it covers is recorded, the steps waiting for it are woken (those
 * someone holds wake on their own), and the events that left the window
 * are deleted.
 */
static void
advance(Job *job, IndexPage *page)
{
	const char *provider = job->ops->index->provider;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	TimestampTz newest = 0;
	ListCell   *lc;
	bool		isnull;

	foreach(lc, page->events)
		newest = Max(newest, time_t_to_timestamptz((pg_time_t) ((IndexedEvent *) lfirst(lc))->occurred_at));
	values[0] = CStringGetTextDatum(provider);
	values[1] = Int64GetDatum(job->id);
	values[2] = TimestampTzGetDatum(page->listing_from);
	values[3] = celloattr_text_datum(db_text(page->cursor), &nulls[3]);
	values[4] = celloattr_text_datum(db_text(page->next_cursor), &nulls[4]);
	values[5] = TimestampTzGetDatum(newest);
	nulls[5] = page->events == NIL ? 'n' : ' ';
	celloattr_prepare(&advance_plan,
			"WITH old AS ("
			"  SELECT provider, waiters FROM celloattr.event_sweeps"
			"   WHERE provider = $1 AND swept_by = $2 AND listing_from = $3"
			"     AND cursor IS NOT DISTINCT FROM $4"
			"     FOR UPDATE"
			"), moved AS ("
			"  UPDATE celloattr.event_sweeps s"
			"     SET cursor = $5, pages = s.pages + 1,"
			"         high_water = GREATEST(s.high_water, $6),"
			"         covered_until = CASE WHEN $5 IS NULL"
			"             THEN s.listing_started_at - pg_catalog.make_interval(secs => " CppAsString2(COVERAGE_MARGIN) ")"
			"             ELSE s.covered_until END,"
			"         covered_from = CASE WHEN $5 IS NULL AND s.listing_full THEN s.listing_from"
			"             ELSE s.covered_from END,"
			"         finished_at = CASE WHEN $5 IS NULL THEN pg_catalog.now() ELSE s.finished_at END,"
			"         listing_from = CASE WHEN $5 IS NULL THEN NULL ELSE s.listing_from END,"
			"         listing_started_at = CASE WHEN $5 IS NULL THEN NULL ELSE s.listing_started_at END,"
			"         swept_by = CASE WHEN $5 IS NULL THEN NULL ELSE s.swept_by END,"
			"         waiters = CASE WHEN $5 IS NULL THEN '{}' ELSE s.waiters END"
			"    FROM old WHERE s.provider = old.provider"
			"  RETURNING old.waiters"
			"), woken AS ("
			"  UPDATE celloattr.jobs j SET next_attempt_at = pg_catalog.now()"
			"   WHERE j.id IN (SELECT w.id FROM celloattr.jobs w, moved"
			"                   WHERE $5 IS NULL AND w.id = ANY (moved.waiters)"
			"                     AND w.state = 'queued' AND w.next_attempt_at > pg_catalog.now()"
			"                     FOR NO KEY UPDATE OF w SKIP LOCKED)"
			")"
			"SELECT pg_catalog.count(*) FROM moved",
			6, (Oid[]) {TEXTOID, INT8OID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TIMESTAMPTZOID});
	celloattr_execute(advance_plan, values, nulls, SPI_OK_SELECT);
	if (page->next_cursor != NULL ||
		DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) == 0)
		return;

	values[1] = TimestampTzGetDatum(job_window_start());
	celloattr_prepare(&expire_plan,
			"DELETE FROM celloattr.payment_events WHERE provider = $1 AND occurred_at < $2",
			2, (Oid[]) {TEXTOID, TIMESTAMPTZOID});
	celloattr_execute(expire_plan, values, NULL, SPI_OK_DELETE);
}

/*
 * Write the pages the jobs read (in the recording transaction, after their
 * verdicts): a step cancelled while it read one still adds the page's
 * events, which are the provider's all the same.
 */
void
index_record(Job **jobs, int njobs)
{
	bool		locked = false;

	for (int i = 0; i < njobs; i++)
	{
		IndexPage  *page = jobs[i]->index_page;

		if (page == NULL)
			continue;
		if (!locked && !lock_index())
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("the tables of the event index are locked by another session")));
		locked = true;
		insert_events(jobs[i]->ops->index->provider, page);
		advance(jobs[i], page);
	}
}
