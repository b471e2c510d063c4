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

	-- only the steps whose request carries no idempotency key were set
	-- aside unsent-or-not: their kinds (src/job.c's steps that are not
	-- replay-safe)
	UPDATE celloattr.jobs j
	   SET state = 'queued', delivered_per = session_user,
		   next_attempt_at = now(), lease_until = NULL, finished_at = NULL
	 WHERE j.attribution_id = a.id AND j.state = 'failed'
	   AND j.kind IN ('cello_signup', 'cello_transaction', 'chargebee_redeliver')
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
 * Watching the work (1.1): the request batch of each attribution, the
 * worker's live statistics, progress per batch, a user's whole story, and
 * a NOTIFY celloattr, '<id>:<state>' when an attribution finishes (the
 * worker's, and cancel()'s below).  Attributions queued under 1.0 belong
 * to no batch.
 */
ALTER TABLE celloattr.attributions ADD COLUMN batch bigint;
/* celloattr.progress: the batches with work left, and the rows of a batch. */
CREATE INDEX attributions_unfinished ON celloattr.attributions (batch)
	WHERE state IN ('queued', 'running');
CREATE INDEX attributions_batch ON celloattr.attributions (batch);

CREATE OR REPLACE FUNCTION celloattr.cancel(attribution_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a celloattr.attributions;
	cancelled integer;
BEGIN
	SELECT * INTO a FROM celloattr.attributions WHERE id = cancel.attribution_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'attribution % does not exist', cancel.attribution_id
			USING ERRCODE = 'no_data_found';
	END IF;

	UPDATE celloattr.jobs j
	   SET state = 'cancelled', finished_at = now(), lease_until = NULL
	 WHERE j.attribution_id = a.id AND j.state IN ('waiting', 'queued', 'running');
	GET DIAGNOSTICS cancelled = ROW_COUNT;

	IF a.state IN ('queued', 'running') THEN
		UPDATE celloattr.attributions
		   SET state = 'cancelled', finished_at = now()
		 WHERE id = a.id;
		PERFORM pg_notify('celloattr', a.id || ':cancelled');
	END IF;
	RETURN cancelled;
END;
$$;

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

/* The batches the worker finished an attribution of in the last 10 minutes. */
CREATE FUNCTION celloattr._recent_batches()
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'cello_recent_batches'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION celloattr._recent_batches() FROM PUBLIC;

/*
 * Progress per request batch (attributions.batch: the statement, in its
 * transaction, that queued them), while it has work left and for 10 minutes
 * after the worker last finished one of its attributions.  requests_left
 * counts, per repair not finished, the requests its path makes at the
 * least (events to resend are known only once its payments step ran), and
 * eta divides them by the pacing rate of each provider (NULL with pacing
 * off).  Reads only the rows of the batches shown, through their indexes.
 */
CREATE VIEW celloattr.progress AS
WITH shown AS (
	SELECT DISTINCT u.batch FROM celloattr.attributions u
	 WHERE u.state IN ('queued', 'running') AND u.batch IS NOT NULL
	UNION
	SELECT r.batch FROM celloattr._recent_batches() AS r(batch)
), counts AS (
	SELECT a.batch,
		   count(*) AS attributions,
		   count(*) FILTER (WHERE a.state = 'queued') AS queued,
		   count(*) FILTER (WHERE a.state = 'running') AS running,
		   count(*) FILTER (WHERE a.state = 'done') AS done,
		   count(*) FILTER (WHERE a.state = 'needs_support') AS needs_support,
		   count(*) FILTER (WHERE a.state = 'failed') AS failed,
		   count(*) FILTER (WHERE a.state IN ('cancelled', 'planned')) AS cancelled_or_planned,
		   coalesce(sum(CASE a.gateway WHEN 'stripe' THEN 4 ELSE 0 END)
			   FILTER (WHERE a.state IN ('queued', 'running')), 0) AS stripe_left,
		   coalesce(sum(CASE a.gateway WHEN 'chargebee' THEN 3 ELSE 0 END)
			   FILTER (WHERE a.state IN ('queued', 'running')), 0) AS chargebee_left,
		   coalesce(sum(CASE WHEN a.signup_via_api THEN 2 ELSE 0 END)
			   FILTER (WHERE a.state IN ('queued', 'running')), 0) AS cello_left,
		   max(a.finished_at) AS last_finished_at
	  FROM shown JOIN celloattr.attributions a ON a.batch = shown.batch
	 GROUP BY a.batch
), rates AS (
	SELECT pg_catalog.current_setting('celloattr.stripe_rate_limit', true)::double precision AS stripe,
		   pg_catalog.current_setting('celloattr.chargebee_rate_limit', true)::double precision / 60 AS chargebee,
		   pg_catalog.current_setting('celloattr.cello_rate_limit', true)::double precision AS cello
)
SELECT c.batch, f.requested_at, f.requested_by, f.reason, c.attributions,
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
  LEFT JOIN celloattr.attributions f ON f.id = c.batch;

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

REVOKE ALL ON celloattr.worker_status, celloattr.progress FROM PUBLIC;

/* Watching the work: progress for everyone who queues it; the worker's
 * statistics and a user's whole story (the HTTP log) for operators. */
GRANT EXECUTE ON FUNCTION celloattr._recent_batches() TO celloattr_app;
GRANT SELECT ON celloattr.progress TO celloattr_app;
GRANT EXECUTE ON FUNCTION celloattr._worker_status(), celloattr.history(text)
	TO celloattr_operator;
GRANT SELECT ON celloattr.worker_status TO celloattr_operator;
