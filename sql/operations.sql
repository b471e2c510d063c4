--
-- Watching the work: the worker's live statistics (worker_status), the
-- progress of each request batch (progress), a user's whole story
-- (history()), and who may read them.
--
\set SHOW_CONTEXT never
SET timezone = 'UTC';

-- earlier files queued repairs with the worker paused: retire them
SELECT count(celloattr.cancel(id)) >= 0 AS retired
  FROM celloattr.attributions WHERE state IN ('queued', 'running');
\! test/fake/fakectl reset
\! test/fake/fakectl seed test/seeds/stripe.json
ALTER SYSTEM SET celloattr.paused = on;
SELECT pg_reload_conf();

CREATE ROLE ops_watch LOGIN IN ROLE celloattr_operator;
CREATE ROLE app_watch LOGIN IN ROLE celloattr_app;

-- the worker's statistics: a row per provider, no URL in any column
SELECT pg_sleep(0.3);
SELECT provider, state, pid IS NOT NULL AS has_pid, database = current_database() AS this_db,
	   started_at <= now() AS started, rate_per_second
  FROM celloattr.worker_status ORDER BY provider;
SELECT count(*) AS columns_with_a_url
  FROM celloattr.worker_status w, jsonb_each_text(to_jsonb(w)) c
 WHERE c.value ~ 'https?://';
SELECT requests_sent AS stripe_sent_before, answered_2xx AS stripe_2xx_before,
	   answered_429 AS stripe_429_before,
	   answered_2xx + answered_4xx + answered_5xx + answered_429 + answered_other
	   + transport_errors AS stripe_answered_before
  FROM celloattr.worker_status WHERE provider = 'stripe' \gset

-- a repair query over three users is one batch, named by its first id; a
-- single call in the next statement is a batch of its own
SELECT count(celloattr.cello_attribute('pNRB1aYqArN', 'user-ops-' || c, 'stripe',
									   customer_id => c, reason => 'ops backfill'))
  FROM unnest(ARRAY['cus_byid', 'cus_meta', 'cus_email']) AS c;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-ops-one', 'stripe',
								 customer_id => 'cus_dry') AS one \gset
SELECT min(id) AS first FROM celloattr.attributions WHERE new_user_id LIKE 'user-ops-%' \gset
SELECT new_user_id, batch = :first AS in_first_batch, batch = id AS names_its_batch
  FROM celloattr.attributions WHERE new_user_id LIKE 'user-ops-%' ORDER BY id;
-- the careful path (a forced repair superseding user-ops-one, in the same
-- statement as a new one) joins the statement's batch as well
SELECT count(celloattr.cello_attribute(v.ucc, v.u, 'stripe', customer_id => 'cus_dup1',
									   force => true, reason => 'ops correction'))
  FROM (VALUES ('pNRB1aYqArN', 'user-ops-two'), ('UPobYBDuu0N', 'user-ops-one')) AS v(ucc, u);
SELECT id AS two FROM celloattr.attributions WHERE new_user_id = 'user-ops-two' \gset
SELECT new_user_id, state, batch = :two AS in_batch_of_two
  FROM celloattr.attributions WHERE new_user_id IN ('user-ops-one', 'user-ops-two') ORDER BY id;

-- while paused, the batches are queued: 4 requests a Stripe repair at the
-- least, an estimate at the pacing rate (none while pacing is off)
ALTER SYSTEM SET celloattr.stripe_rate_limit = 5;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT batch = :first AS first_batch, reason, requested_by = current_user AS by_me,
	   attributions, queued, running, done, needs_support, failed, cancelled_or_planned,
	   requests_left, eta
  FROM celloattr.progress WHERE batch >= :first ORDER BY batch;
SELECT state, rate_per_second FROM celloattr.worker_status WHERE provider = 'stripe';
ALTER SYSTEM RESET celloattr.stripe_rate_limit;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT eta IS NULL AS no_eta_unpaced FROM celloattr.progress WHERE batch = :first;

-- the worker drains them; the finished batches stay in view
ALTER SYSTEM SET celloattr.paused = off;
SELECT pg_reload_conf();
SELECT count(celloattr.wait(id)) AS waited
  FROM celloattr.attributions WHERE new_user_id LIKE 'user-ops-%';
SELECT batch = :first AS first_batch, attributions, queued, running, done, needs_support,
	   failed, cancelled_or_planned, requests_left, eta, last_finished_at IS NOT NULL AS finished
  FROM celloattr.progress WHERE batch >= :first ORDER BY batch;
-- its counts are one row per batch once the worker is through
SELECT count(*) AS rows_of_the_first_batch FROM celloattr.batch_counts WHERE batch = :first;
SELECT requests_sent - :stripe_sent_before AS sent, answered_2xx - :stripe_2xx_before AS ok,
	   requests_sent - :stripe_sent_before =
	   answered_2xx + answered_4xx + answered_5xx + answered_429 + answered_other
	   + transport_errors - :stripe_answered_before AS all_answered
  FROM celloattr.worker_status WHERE provider = 'stripe';
SELECT count(*) AS logged FROM celloattr.http_log h JOIN celloattr.attributions a ON a.id = h.attribution_id
 WHERE a.new_user_id LIKE 'user-ops-%';

-- a 429 holds Stripe back until its Retry-After has passed, and is the last error
\! test/fake/fakectl fault '{"provider": "stripe", "method": "POST", "path_regex": "^/v1/customers/cus_429$", "action": "rate_limit", "retry_after": 4, "count": 1}' >/dev/null
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-ops-429', 'stripe', customer_id => 'cus_429') AS f429 \gset
DO $$
BEGIN
	FOR i IN 1..100 LOOP
		EXIT WHEN EXISTS (SELECT 1 FROM celloattr.worker_status
						   WHERE provider = 'stripe' AND held_until IS NOT NULL);
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
SELECT answered_429 - :stripe_429_before AS answered_429,
	   held_until BETWEEN now() AND now() + interval '5 s' AS held,
	   last_error, last_error_at <= now() AS error_time
  FROM celloattr.worker_status WHERE provider = 'stripe';
SELECT provider, held_until IS NULL AS not_held FROM celloattr.worker_status
 WHERE provider <> 'stripe' ORDER BY provider;
SELECT celloattr.wait(:f429);
SELECT held_until IS NULL AS released FROM celloattr.worker_status WHERE provider = 'stripe';

-- a user's whole story: the superseded attribution too, each step, each
-- request, in order
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-ops-story', 'stripe',
								 customer_id => 'cus_gone') AS gone \gset
SELECT celloattr.wait(:gone);
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-ops-story', 'stripe', customer_id => 'cus_forced',
								 force => true, reason => 'the referrer was wrong') AS forced \gset
SELECT celloattr.wait(:forced);
SELECT attribution_id - :gone AS attribution, event, state,
	   regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(detail, 'http://[^/]+', '<stripe>'),
		 '\(\d+(\.\d+)? ms\)', '(N ms)'), 'created%5Bgte%5D=\d+', 'created%5Bgte%5D=<window start>'),
		 '(supersedes|superseded by) \d+', '\1 <id>'), 'requested by ' || current_user, 'requested by <me>') AS detail
  FROM celloattr.history('user-ops-story');
SELECT count(*) AS no_such_user FROM celloattr.history('user-nobody');
-- support items are in it (cus_byid has a paid invoice before the window)
SELECT event, state, detail
  FROM celloattr.history('user-ops-cus_byid') WHERE event = 'support item';

-- The counts behind progress agree with the attributions, batch by batch,
-- whatever changed them: the worker, a forced repair, retry(), cancel(), a
-- savepoint rolled back, a DELETE.  (miscounted: the batches whose counts
-- and attributions differ.)
\i test/sql/miscounted.sql
SELECT count(*) AS miscounted FROM miscounted;
-- a failed repair retried is queued again, and its batch with it
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-ops-retried', 'stripe',
								 customer_id => 'cus_missing', reason => 'retried') AS retried \gset
SELECT celloattr.wait(:retried);
ALTER SYSTEM SET celloattr.paused = on;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT celloattr.retry(:retried) AS requeued;
SELECT reason, attributions, queued, failed, requests_left FROM celloattr.progress WHERE batch = :retried;
-- a cancel() rolled back to its savepoint leaves it queued; one committed cancels it
BEGIN;
SAVEPOINT s;
SELECT celloattr.cancel(:retried) AS cancelled;
SELECT queued, cancelled_or_planned FROM celloattr.progress WHERE batch = :retried;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT queued, cancelled_or_planned FROM celloattr.progress WHERE batch = :retried;
-- (in a transaction reading from one snapshot, which adds its row without folding)
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT celloattr.cancel(:retried) AS cancelled;
COMMIT;
SELECT queued, cancelled_or_planned, requests_left FROM celloattr.progress WHERE batch = :retried;
SELECT count(*) AS miscounted FROM miscounted;
-- a batch whose attributions are deleted is gone from progress
DELETE FROM celloattr.attributions WHERE id = :retried;
SELECT count(*) AS deleted_batch_shown FROM celloattr.progress WHERE batch = :retried;
SELECT count(*) AS miscounted FROM miscounted;
ALTER SYSTEM SET celloattr.paused = off;
SELECT pg_reload_conf();

-- who may read what
SET ROLE app_watch;
SELECT count(*) >= 1 AS app_sees_progress FROM celloattr.progress;
SELECT count(*) FROM celloattr.worker_status;
SELECT count(*) FROM celloattr.history('user-ops-story');
SELECT count(*) FROM celloattr.batch_counts;
RESET ROLE;
SET ROLE ops_watch;
SELECT count(*) AS operator_sees_providers FROM celloattr.worker_status;
SELECT count(*) > 0 AS operator_reads_history FROM celloattr.history('user-ops-story');
RESET ROLE;
SET ROLE app_watch;
SELECT count(*) FROM celloattr._worker_status();
RESET ROLE;

DROP ROLE ops_watch, app_watch;
