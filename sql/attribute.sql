--
-- Queueing repairs: the plan of each path, the idempotent repeat, the
-- conflict and force, rollback and dry run.  The worker is paused here
-- (celloattr.paused), so every row stays as queued.
--
\set SHOW_CONTEXT never
SHOW celloattr.paused;

-- one attribution per path, and the first steps each path queues
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s', 'stripe',
	customer_id => 'cus_A', email => 'jane@example.com') AS stripe_id \gset
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-c', 'chargebee') AS chargebee_id \gset
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-a', 'cello_api',
	email => 'al@example.com', name => 'Al', organization_id => 'org-7') AS api_id \gset
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-m', 'stripe',
	signup_via_api => true, email => 'mo@example.com') AS mixed_id \gset

SELECT a.gateway, a.new_user_id, a.signup_via_api, a.state, a.requested_by = session_user AS by_me,
	   j.kind, j.stage, j.state AS job_state, j.attempts,
	   j.idempotency_key ~ ('^ca-[0-9a-f]{12}-' || a.id || '-' || j.kind || '$') AS key_ok
  FROM celloattr.attributions a JOIN celloattr.jobs j ON j.attribution_id = a.id
 ORDER BY a.id, j.stage, j.id;

-- calling again returns the same id and queues nothing new
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s', 'stripe') = :stripe_id AS same_id;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s', 'stripe',
	customer_id => 'cus_A', email => 'jane@example.com') = :stripe_id AS same_id;
SELECT count(*) AS jobs FROM celloattr.jobs WHERE attribution_id = :stripe_id;

-- the same user on another gateway is another repair
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s', 'chargebee') <> :stripe_id AS new_id;

-- a different ucc for the same user and gateway is a dispute
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-s', 'stripe');
-- force needs a reason
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-s', 'stripe', force => true);
-- force with a reason supersedes: the old repair's unfinished steps are cancelled
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-s', 'stripe', force => true,
	reason => 'support ticket 4711: referrer proved the invite') AS forced_id \gset
SELECT id = :stripe_id AS is_old, ucc, state, superseded_by = :forced_id AS superseded,
	   supersedes = :stripe_id AS supersedes_old, force, reason
  FROM celloattr.attributions WHERE id IN (:stripe_id, :forced_id) ORDER BY id;
SELECT attribution_id = :forced_id AS of_forced, kind, state
  FROM celloattr.jobs WHERE attribution_id IN (:stripe_id, :forced_id) ORDER BY id;
-- the superseded one is history: the old ucc is a conflict now
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s', 'stripe');

-- a rolled-back call leaves nothing behind
SELECT count(*) AS before FROM celloattr.attributions \gset
BEGIN;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-rollback', 'stripe') > 0 AS queued;
SELECT count(*) AS jobs_in_xact FROM celloattr.jobs j JOIN celloattr.attributions a
	ON a.id = j.attribution_id WHERE a.new_user_id = 'user-rollback';
ROLLBACK;
SELECT count(*) - :before AS left_behind FROM celloattr.attributions;
SELECT count(*) AS jobs_left FROM celloattr.jobs j JOIN celloattr.attributions a
	ON a.id = j.attribution_id WHERE a.new_user_id = 'user-rollback';

-- dry runs: reading steps queue, mutating ones are only planned
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-d', 'stripe', dry_run => true) AS dry_id \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-d', 'stripe', dry_run => true) = :dry_id AS same_dry_run;
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-d2', 'stripe', signup_via_api => true,
	dry_run => true) AS dry_mixed_id \gset
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-d3', 'cello_api', dry_run => true) AS dry_api_id \gset
SELECT a.new_user_id, a.dry_run, a.state, j.kind, j.stage, j.state AS job_state
  FROM celloattr.attributions a JOIN celloattr.jobs j ON j.attribution_id = a.id
 WHERE a.dry_run ORDER BY a.id, j.id;
-- a dry run does not stand in the way of the real repair of the same user
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-d', 'stripe') <> :dry_id AS real_repair;

-- wait() on a queued repair returns its state when the timeout passes
SELECT celloattr.wait(:mixed_id, '10 ms');
SELECT celloattr.wait(:dry_api_id, '10 ms');
SELECT celloattr.wait(-1, '10 ms');

-- cancel and retry, for operators
SELECT celloattr.cancel(:chargebee_id) AS cancelled_steps;
SELECT state FROM celloattr.attributions WHERE id = :chargebee_id;
SELECT celloattr.retry(:chargebee_id);
-- a cancelled repair frees the user for a new one
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-c', 'chargebee') <> :chargebee_id AS new_repair;
SELECT celloattr.retry(:stripe_id);
-- retry of a queued repair makes its waiting steps due now
UPDATE celloattr.jobs SET next_attempt_at = now() + interval '1 hour' WHERE attribution_id = :api_id;
SELECT celloattr.retry(:api_id) AS requeued;
SELECT count(*) AS due_now FROM celloattr.jobs
 WHERE attribution_id = :api_id AND next_attempt_at <= now();
