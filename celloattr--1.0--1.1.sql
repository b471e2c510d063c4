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
