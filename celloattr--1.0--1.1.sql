/*
 * celloattr--1.0--1.1.sql: from 1.0 to 1.1.
 *
 * Every change here is also in celloattr--1.1.sql, at the place where a
 * fresh install gets it; t/011_upgrade.pl checks that both give the same
 * schema.  New columns go at the end of their table in both scripts, since
 * ALTER TABLE ADD COLUMN appends.
 */

\echo Use "ALTER EXTENSION celloattr UPDATE TO '1.1'" to load this file. \quit

/*
 * A restore of a dump brings the installation's row back beside the one that
 * CREATE EXTENSION has just made.  The older row is the installation the
 * queued work belongs to: it stays, so a restored database keeps its
 * idempotency keys, and follow-up steps are never made once per row.
 */
CREATE FUNCTION celloattr._keep_first_installation()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM celloattr.installation
	 WHERE install_id <> (SELECT install_id FROM celloattr.installation
						   ORDER BY created_at, install_id LIMIT 1);
	RETURN NULL;
END
$$;
CREATE TRIGGER keep_first_installation
	AFTER INSERT ON celloattr.installation
	FOR EACH STATEMENT EXECUTE FUNCTION celloattr._keep_first_installation();
REVOKE ALL ON FUNCTION celloattr._keep_first_installation() FROM PUBLIC;

/* A database restored under 1.0 holds both rows already. */
DELETE FROM celloattr.installation
 WHERE install_id <> (SELECT install_id FROM celloattr.installation
					   ORDER BY created_at, install_id LIMIT 1);

/*
 * Times in a row a worker stopped while a step was running: a step that
 * reached 3 is set aside ('failed') instead of being sent again, and
 * retry() starts it over.
 */
ALTER TABLE celloattr.jobs ADD COLUMN interruptions integer NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION celloattr.retry(attribution_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a celloattr.attributions;
	requeued integer;
BEGIN
	SELECT * INTO a FROM celloattr.attributions WHERE id = retry.attribution_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'attribution % does not exist', retry.attribution_id
			USING ERRCODE = 'no_data_found';
	END IF;
	IF a.superseded_by IS NOT NULL THEN
		RAISE EXCEPTION 'attribution % was superseded by attribution %', a.id, a.superseded_by
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Retry the attribution that superseded it.';
	END IF;
	IF a.state = 'cancelled' THEN
		RAISE EXCEPTION 'attribution % was cancelled', a.id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Call celloattr.cello_attribute() again to queue a new repair.';
	END IF;

	-- failed steps (set aside ones too) start over with a fresh attempt
	-- budget; steps waiting out a backoff become due now
	UPDATE celloattr.jobs j
	   SET state = 'queued', attempts = CASE WHEN j.state = 'failed' THEN 0 ELSE j.attempts END,
		   interruptions = CASE WHEN j.state = 'failed' THEN 0 ELSE j.interruptions END,
		   next_attempt_at = now(), lease_until = NULL, finished_at = NULL
	 WHERE j.attribution_id = a.id AND j.state IN ('failed', 'queued');
	GET DIAGNOSTICS requeued = ROW_COUNT;

	IF requeued > 0 AND a.state IN ('failed', 'needs_support', 'done') THEN
		UPDATE celloattr.attributions
		   SET state = 'queued', finished_at = NULL, last_error = NULL
		 WHERE id = a.id;
	END IF;
	RETURN requeued;
END;
$$;

/*
 * Who told (mark_delivered()) that a step set aside for want of an
 * idempotency key had reached the provider.
 */
ALTER TABLE celloattr.jobs ADD COLUMN delivered_per text;

CREATE FUNCTION celloattr.mark_delivered(attribution_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a celloattr.attributions;
	confirmed integer;
BEGIN
	SELECT * INTO a FROM celloattr.attributions WHERE id = mark_delivered.attribution_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'attribution % does not exist', mark_delivered.attribution_id
			USING ERRCODE = 'no_data_found';
	END IF;

	-- the worker sets aside, with this mark, only a step whose request
	-- carries no idempotency key and may have arrived (src/job.c)
	UPDATE celloattr.jobs j
	   SET state = 'queued', delivered_per = session_user,
		   next_attempt_at = now(), lease_until = NULL, finished_at = NULL
	 WHERE j.attribution_id = a.id AND j.state = 'failed'
	   AND j.last_error LIKE 'set aside:%';
	GET DIAGNOSTICS confirmed = ROW_COUNT;
	IF confirmed = 0 THEN
		RAISE EXCEPTION 'attribution % has no step set aside for want of an idempotency key', a.id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'celloattr.retry() runs failed steps again.';
	END IF;

	IF a.state IN ('failed', 'needs_support', 'done') THEN
		UPDATE celloattr.attributions
		   SET state = 'queued', finished_at = NULL, last_error = NULL
		 WHERE id = a.id;
	END IF;
	RETURN confirmed;
END;
$$;

COMMENT ON FUNCTION celloattr.mark_delivered(bigint)
IS 'the provider has the events of the steps set aside for want of an idempotency key: the worker records them as sent, without sending, and carries on';
REVOKE ALL ON FUNCTION celloattr.mark_delivered(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION celloattr.mark_delivered(bigint) TO celloattr_operator;

/*
 * A row of the application's that was invalid and had no invoice id
 * stands for no other row: each one is kept in the support report (1.0
 * kept the first only).
 */
DROP INDEX celloattr.support_items_event;
CREATE UNIQUE INDEX support_items_event
	ON celloattr.support_items (attribution_id, trigger, coalesce(invoice_id, ''))
	WHERE invoice_id IS NOT NULL OR job_id IS NOT NULL;

/*
 * The index of the providers' payment events (Stripe's invoice.paid,
 * Chargebee's payment_succeeded) inside the transaction window, shared by
 * every repair: the worker pages through a provider's event list once,
 * then only through what is newer, and the payment steps read their
 * customer's events here instead of listing the account's events each.
 * Events older than the window leave with it.  Not dumped: it is a copy of
 * what the providers hold, rebuilt by the next sweep (a restored database
 * starts with empty sweeps, so nothing reads a stale copy).
 */
CREATE TABLE celloattr.payment_events (
	provider text NOT NULL CHECK (provider IN ('stripe', 'chargebee')),
	event_id text NOT NULL,
	customer_id text NOT NULL,
	occurred_at timestamptz NOT NULL,
	invoice_id text,
	-- the event as listed, for a provider whose events are re-posted
	-- unchanged (Chargebee); NULL where the provider resends by id (Stripe)
	event text,
	indexed_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (provider, event_id)
);
CREATE INDEX payment_events_customer
	ON celloattr.payment_events (provider, customer_id, occurred_at);
/* ...and the window's end: the oldest go first */
CREATE INDEX payment_events_occurred ON celloattr.payment_events (provider, occurred_at);

/*
 * One row per provider: what the index covers, and the listing in progress.
 * Every event that occurred from covered_from on and became visible before
 * covered_until is indexed.  A listing keeps one window start (listing_from)
 * for all its pages and goes on from cursor, so an interrupted one resumes
 * from its last page; swept_by is the step that reads its pages, waiters
 * the steps it wakes when it is complete.
 */
CREATE TABLE celloattr.event_sweeps (
	provider text PRIMARY KEY CHECK (provider IN ('stripe', 'chargebee')),
	covered_from timestamptz,
	covered_until timestamptz,
	high_water timestamptz,
	finished_at timestamptz,
	listing_from timestamptz,
	listing_started_at timestamptz,
	listing_full boolean NOT NULL DEFAULT false,
	cursor text,
	pages integer NOT NULL DEFAULT 0,
	swept_by bigint,
	waiters bigint[] NOT NULL DEFAULT '{}'
);
INSERT INTO celloattr.event_sweeps (provider) VALUES ('stripe'), ('chargebee');

/* TRUNCATE of the index starts it over: nothing may read it as covered. */
CREATE FUNCTION celloattr._payment_events_truncated()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE celloattr.event_sweeps
	   SET covered_from = NULL, covered_until = NULL, high_water = NULL,
		   listing_from = NULL, listing_started_at = NULL, cursor = NULL, pages = 0;
	RETURN NULL;
END
$$;
CREATE TRIGGER payment_events_truncated
	AFTER TRUNCATE ON celloattr.payment_events
	FOR EACH STATEMENT EXECUTE FUNCTION celloattr._payment_events_truncated();
REVOKE ALL ON FUNCTION celloattr._payment_events_truncated() FROM PUBLIC;

/* How far the event index is (app); the events themselves hold the
 * providers' customer data, like the HTTP log (operators). */
GRANT SELECT ON celloattr.event_sweeps TO celloattr_app;
GRANT SELECT ON celloattr.payment_events TO celloattr_operator;

/*
 * Watching the work (1.1): the request batch of each attribution, the
 * worker's live statistics, progress per batch, a user's whole story, and
 * a NOTIFY celloattr, '<id>:<state>' when an attribution finishes (the
 * triggers below).  Attributions queued under 1.0 belong to no batch.
 */
ALTER TABLE celloattr.attributions ADD COLUMN batch bigint;

/* ------------------------------------------------------ watching the work */

/*
 * The worker's live statistics, from shared memory (src/stats.c): cheap to
 * poll.  A row per provider of the worker that runs, or last ran since the
 * server started; no URL and no secret.
 */
CREATE FUNCTION celloattr._worker_status(
	OUT database text,
	OUT pid integer,
	OUT state text,
	OUT started_at timestamptz,
	OUT steps_running integer,
	OUT transfers_in_flight integer,
	OUT waiting_for_pace integer,
	OUT steps_claimed bigint,
	OUT outcomes_recorded bigint,
	OUT provider text,
	OUT requests_sent bigint,
	OUT answered_2xx bigint,
	OUT answered_4xx bigint,
	OUT answered_5xx bigint,
	OUT answered_429 bigint,
	OUT answered_other bigint,
	OUT transport_errors bigint,
	OUT rate_per_second double precision,
	OUT held_until timestamptz,
	OUT last_error text,
	OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cello_worker_status'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION celloattr._worker_status() FROM PUBLIC;

CREATE VIEW celloattr.worker_status AS
	SELECT * FROM celloattr._worker_status();

COMMENT ON VIEW celloattr.worker_status
IS 'the worker now: its state, transfers, and per provider the requests sent and answered by class, pacing, 429 hold and last error (counters since it started)';

/*
 * The counts behind celloattr.progress, so that a look at it reads a few
 * rows per batch shown and never the attributions of a batch being
 * drained: per request batch, its attributions by state, those not
 * finished by the path they take (for the requests left), and when one of
 * them last finished.
 *
 * The statement triggers on attributions below keep it (src/counts.c).  A
 * statement that queues attributions or changes their states adds a row of
 * its changes per batch (+1 for the new state, -1 for the old); a change of
 * states folds into it the rows of those batches that no other transaction
 * holds (FOR UPDATE SKIP LOCKED).  Nothing waits for a row of
 * this table, the worker least of all (an application's open transaction
 * that cancel()ed one attribution of a batch must not stall the recording
 * of all the others), and a batch keeps about one row per transaction
 * changing it at the same time (and one per INSERT of a bulk repair until
 * the worker's first claim folds them).  pg_dump keeps no rows of it:
 * restoring attributions counts them again.
 */
CREATE TABLE celloattr.batch_counts (
	batch bigint NOT NULL,
	queued integer NOT NULL,
	running integer NOT NULL,
	done integer NOT NULL,
	needs_support integer NOT NULL,
	failed integer NOT NULL,
	cancelled integer NOT NULL,
	planned integer NOT NULL,
	-- not finished: on the Stripe path, the Chargebee path, with a signup
	-- through Cello's API
	stripe_unfinished integer NOT NULL,
	chargebee_unfinished integer NOT NULL,
	signup_unfinished integer NOT NULL,
	last_finished_at timestamptz
);
CREATE INDEX batch_counts_batch ON celloattr.batch_counts (batch);
/* the batches progress shows: with work left, or one finished lately */
CREATE INDEX batch_counts_unfinished ON celloattr.batch_counts (batch)
	WHERE queued <> 0 OR running <> 0;
CREATE INDEX batch_counts_finished ON celloattr.batch_counts (last_finished_at);

/*
 * The statement triggers of attributions (src/counts.c): batch_counts, and a
 * NOTIFY celloattr, '<id>:<state>' for each attribution that finishes (in
 * the transaction that records it, however it does: the worker, cancel(), a
 * forced repair superseding it, a dry run with nothing to read).
 */
CREATE FUNCTION celloattr._count_attributions()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cello_count_attributions'
LANGUAGE C;

CREATE TRIGGER attributions_counted_insert
	AFTER INSERT ON celloattr.attributions REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION celloattr._count_attributions();
CREATE TRIGGER attributions_counted_update
	AFTER UPDATE ON celloattr.attributions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION celloattr._count_attributions();
CREATE TRIGGER attributions_counted_delete
	AFTER DELETE ON celloattr.attributions REFERENCING OLD TABLE AS old_rows
	FOR EACH STATEMENT EXECUTE FUNCTION celloattr._count_attributions();
CREATE TRIGGER attributions_counted_truncate
	AFTER TRUNCATE ON celloattr.attributions
	FOR EACH STATEMENT EXECUTE FUNCTION celloattr._count_attributions();

/*
 * Progress per request batch (attributions.batch: the statement, in its
 * transaction, that queued them), while it has work left and for 10 minutes
 * after one of its attributions last finished.  requests_left counts, per
 * repair not finished, the requests its path makes at the least (events to
 * resend are known only once its payments step ran), and eta divides them
 * by the pacing rate of each provider (NULL with pacing off).  It reads
 * batch_counts only, through its indexes (and the first attribution of
 * each batch shown, by its id).
 */
CREATE VIEW celloattr.progress AS
WITH shown AS (
	SELECT u.batch FROM celloattr.batch_counts u
	 WHERE u.queued <> 0 OR u.running <> 0
	UNION
	SELECT r.batch FROM celloattr.batch_counts r
	 WHERE r.last_finished_at > pg_catalog.now() - interval '10 minutes'
), counts AS (
	SELECT c.batch,
		   sum(c.queued) AS queued, sum(c.running) AS running, sum(c.done) AS done,
		   sum(c.needs_support) AS needs_support, sum(c.failed) AS failed,
		   sum(c.cancelled) + sum(c.planned) AS cancelled_or_planned,
		   4 * sum(c.stripe_unfinished) AS stripe_left,
		   3 * sum(c.chargebee_unfinished) AS chargebee_left,
		   2 * sum(c.signup_unfinished) AS cello_left,
		   max(c.last_finished_at) AS last_finished_at
	  FROM shown JOIN celloattr.batch_counts c ON c.batch = shown.batch
	 GROUP BY c.batch
	HAVING sum(c.queued + c.running + c.done + c.needs_support + c.failed + c.cancelled
			   + c.planned) > 0
), rates AS (
	SELECT pg_catalog.current_setting('celloattr.stripe_rate_limit', true)::double precision AS stripe,
		   pg_catalog.current_setting('celloattr.chargebee_rate_limit', true)::double precision / 60 AS chargebee,
		   pg_catalog.current_setting('celloattr.cello_rate_limit', true)::double precision AS cello
)
SELECT c.batch, f.requested_at, f.requested_by, f.reason,
	   c.queued + c.running + c.done + c.needs_support + c.failed + c.cancelled_or_planned
		   AS attributions,
	   c.queued, c.running, c.done, c.needs_support, c.failed, c.cancelled_or_planned,
	   c.stripe_left + c.chargebee_left + c.cello_left AS requests_left,
	   CASE WHEN (c.stripe_left > 0 AND NOT r.stripe > 0)
			  OR (c.chargebee_left > 0 AND NOT r.chargebee > 0)
			  OR (c.cello_left > 0 AND NOT r.cello > 0) THEN NULL
			ELSE pg_catalog.make_interval(secs => pg_catalog.ceil(greatest(
				 c.stripe_left / nullif(r.stripe, 0), c.chargebee_left / nullif(r.chargebee, 0),
				 c.cello_left / nullif(r.cello, 0), 0)))
	   END AS eta,
	   c.last_finished_at
  FROM counts c
 CROSS JOIN rates r
  LEFT JOIN celloattr.attributions f ON f.id = c.batch
 WHERE c.queued + c.running > 0
	OR c.last_finished_at > pg_catalog.now() - interval '10 minutes';

COMMENT ON VIEW celloattr.progress
IS 'per request batch (the statement that queued it): attributions queued, running, done, needs_support, failed; requests left at the least and the time they take at the pacing rate';

/*
 * A user's whole story, in order: each attribution of the user (superseded
 * ones too) as it was asked for, its steps, every request made for it (the
 * HTTP log: secrets removed), its support items, and how it ended.
 */
CREATE FUNCTION celloattr.history(new_user_id text)
RETURNS TABLE (
	at timestamptz,
	attribution_id bigint,
	step_id bigint,
	event text,
	state text,
	detail text)
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT e.at, a.id, e.step_id, e.event, e.state, e.detail
	  FROM celloattr.attributions a
	 CROSS JOIN LATERAL (
		SELECT a.requested_at, NULL::bigint, 'attribution', a.state,
			   format('ucc %s on %s%s, requested by %s', a.ucc, a.gateway,
					  CASE WHEN a.dry_run THEN ' (dry run)' ELSE '' END, a.requested_by)
			   || coalesce(', customer ' || a.customer_id, '')
			   || coalesce(', reason: ' || a.reason, '')
			   || coalesce(', supersedes ' || a.supersedes, ''),
			   1, 0::bigint
		UNION ALL
		SELECT j.created_at, j.id, 'step', j.state,
			   format('%s (stage %s), %s attempt(s)', j.kind, j.stage, j.attempts)
			   || coalesce(': ' || j.last_error, ''),
			   2, j.id
		  FROM celloattr.jobs j WHERE j.attribution_id = a.id
		UNION ALL
		SELECT h.started_at, h.job_id, 'request', coalesce(h.status::text, 'no answer'),
			   format('%s %s %s (%s ms)', h.provider, h.method, h.url, round(h.duration_ms::numeric, 1))
			   || coalesce(': ' || h.error, ''),
			   3, h.id
		  FROM celloattr.http_log h WHERE h.attribution_id = a.id
		UNION ALL
		SELECT s.created_at, s.job_id, 'support item', s.trigger,
			   concat_ws(', ', s.invoice_id, s.price || ' ' || s.currency, s.reason),
			   4, s.id
		  FROM celloattr.support_items s WHERE s.attribution_id = a.id
		UNION ALL
		SELECT a.finished_at, NULL, 'finished', a.state,
			   concat_ws(', ', a.last_error, 'superseded by ' || a.superseded_by),
			   5, 0
		 WHERE a.finished_at IS NOT NULL
	 ) AS e(at, step_id, event, state, detail, ord, seq)
	 WHERE a.new_user_id = history.new_user_id
	 ORDER BY e.at, a.id, e.ord, e.seq
$$;

COMMENT ON FUNCTION celloattr.history(text)
IS 'every attribution of a user, its steps, requests, support items and end, in order';
REVOKE ALL ON FUNCTION celloattr.history(text) FROM PUBLIC;

REVOKE ALL ON celloattr.worker_status, celloattr.progress, celloattr.batch_counts FROM PUBLIC;
REVOKE ALL ON FUNCTION celloattr._count_attributions() FROM PUBLIC;

/* Watching the work: progress for everyone who queues it; the worker's
 * statistics and a user's whole story (the HTTP log) for operators. */
GRANT SELECT ON celloattr.progress TO celloattr_app;
GRANT EXECUTE ON FUNCTION celloattr._worker_status(), celloattr.history(text)
	TO celloattr_operator;
GRANT SELECT ON celloattr.worker_status TO celloattr_operator;
