--
-- The Stripe path end to end, through the worker, against the local fake.
--
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE TEMP TABLE fake_requests (r jsonb);
CREATE TEMP TABLE fake_state (s jsonb);
CREATE TEMP TABLE fake_deliveries (d jsonb);

-- earlier files queued repairs with the worker paused: retire them
SELECT count(celloattr.cancel(id)) >= 0 AS retired
  FROM celloattr.attributions WHERE state IN ('queued', 'running');
\! test/fake/fakectl reset
\! test/fake/fakectl seed test/seeds/stripe.json
ALTER SYSTEM SET celloattr.paused = off;
SELECT pg_reload_conf();

-- by id, with paid invoices: two inside the window are resent, one older
-- goes to the support report, an open one is left alone
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-byid', 'stripe',
	customer_id => 'cus_byid', organization_id => 'org-1') AS byid \gset
-- by metadata new_user_id, by email, neither, several, deleted
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-meta', 'stripe') AS meta \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-email', 'stripe',
	email => 'email@example.com') AS email \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-none', 'stripe',
	email => 'nobody@example.com') AS none \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-dup', 'stripe',
	email => 'dup@example.com') AS dup \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-gone', 'stripe',
	customer_id => 'cus_gone') AS gone \gset

SELECT celloattr.wait(:byid), celloattr.wait(:meta), celloattr.wait(:email),
	   celloattr.wait(:none), celloattr.wait(:dup), celloattr.wait(:gone);

SELECT new_user_id, state, customer_id, last_error
  FROM celloattr.attributions WHERE id IN (:byid, :meta, :email, :none, :dup, :gone) ORDER BY id;
-- (a payments step knows when its customer was created: whether any of its
-- invoices can be older than the window)
SELECT a.new_user_id, j.kind, j.stage, j.state, j.attempts, j.payload - 'customer_since' AS payload,
	   (j.payload->>'customer_since')::bigint > 0 AS customer_since
  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
 WHERE a.id IN (:byid, :meta, :email) ORDER BY a.id, j.stage, j.payload->>'event';

-- metadata: our keys set, every other key kept
\copy fake_state (s) from program 'test/fake/fakectl state --provider stripe --copy'
SELECT c.key AS customer, c.value->'metadata' AS metadata
  FROM fake_state, jsonb_each(s->'customers') c
 WHERE c.key IN ('cus_byid', 'cus_meta', 'cus_email') ORDER BY 1;

-- exactly the in-window invoice.paid events of the customer were resent,
-- to Cello's endpoint
\copy fake_deliveries (d) from program 'test/fake/fakectl deliveries --copy'
SELECT d->>'event_id' AS event, d->>'webhook_endpoint' AS endpoint, d->>'customer' AS customer
  FROM fake_deliveries ORDER BY 1;

-- the old invoice is in the support report with the fields of its event
SELECT trigger, invoice_id, price, currency, "interval", seats_used, product_key,
	   subscription_id, event_timestamp < now() - interval '30 days' AS old, reason
  FROM celloattr.support_report(:byid);
SELECT plan FROM celloattr.attributions WHERE id = :byid;

-- what the worker sent for this customer: paths, parameters, idempotency keys
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider stripe --copy'
SELECT r->>'method' AS method, r->>'path' AS path, r->>'query' AS query,
	   r->>'body' AS body, r->>'status' AS status,
	   (r->'headers'->>'idempotency-key') IS NOT NULL AS has_key
  FROM fake_requests
 WHERE r->>'path' LIKE '%cus_byid%' OR r->>'path' LIKE '%evt_recent%' OR r->>'query' LIKE '%cus_byid%'
 ORDER BY r->>'method', r->>'path';
-- the event listing follows Stripe's pagination
SELECT DISTINCT regexp_replace(r->>'query', 'created%5Bgte%5D=[0-9]+', 'created%5Bgte%5D=<window start>') AS events_pages
  FROM fake_requests WHERE r->>'path' = '/v1/events' ORDER BY 1;
-- those pages filled the shared index, which every repair read
SELECT provider, covered_until > now() - interval '5 minutes' AS covered, listing_from IS NULL AS idle,
	   swept_by IS NULL AS free, waiters
  FROM celloattr.event_sweeps ORDER BY provider;
SELECT provider, count(*) AS indexed, count(*) FILTER (WHERE event IS NOT NULL) AS with_body
  FROM celloattr.payment_events GROUP BY provider;
SELECT count(*) FILTER (WHERE r->>'path' = '/v1/events') AS event_pages,
	   count(*) FILTER (WHERE r->>'path' = '/v1/invoices') AS invoice_listings
  FROM fake_requests;
-- every POST carries the step's own idempotency key
SELECT count(*) AS posts, count(*) FILTER (WHERE j.id IS NOT NULL) AS keyed_by_a_step
  FROM fake_requests f
  LEFT JOIN celloattr.jobs j ON j.idempotency_key = f.r->'headers'->>'idempotency-key'
 WHERE f.r->>'method' = 'POST';
-- and no request broke the Stripe spec
SELECT count(*) AS spec_violations FROM fake_requests
 WHERE jsonb_array_length(coalesce(r->'spec_violations', '[]')) > 0;

-- a conflicting cello_ucc is refused; forced, it is overwritten
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-conflict', 'stripe',
	customer_id => 'cus_conflict') AS conflict \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-forced', 'stripe',
	customer_id => 'cus_forced', force => true, reason => 'ticket 99: referrer verified') AS forced \gset
SELECT celloattr.wait(:conflict), celloattr.wait(:forced);
SELECT new_user_id, state, last_error FROM celloattr.attributions
 WHERE id IN (:conflict, :forced) ORDER BY id;
TRUNCATE fake_state;
\copy fake_state (s) from program 'test/fake/fakectl state --provider stripe --copy'
SELECT c.key AS customer, c.value->'metadata'->>'cello_ucc' AS cello_ucc
  FROM fake_state, jsonb_each(s->'customers') c
 WHERE c.key IN ('cus_conflict', 'cus_forced') ORDER BY 1;

-- a dry run reads, plans, and changes nothing
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-dry', 'stripe',
	email => 'dry@example.com', dry_run => true) AS dry \gset
SELECT celloattr.wait(:dry);
SELECT state, plan FROM celloattr.attributions WHERE id = :dry;
SELECT kind, state, payload - 'customer_since' AS payload FROM celloattr.jobs WHERE attribution_id = :dry ORDER BY stage;
SELECT count(*) AS support_rows FROM celloattr.support_report(:dry);
TRUNCATE fake_requests;
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider stripe --copy'
SELECT count(*) FILTER (WHERE r->>'method' = 'POST' AND r->>'path' LIKE '%cus_dry%') AS posts_to_dry,
	   count(*) FILTER (WHERE r->>'path' LIKE '/v1/events/evt_dry%') AS resends_of_dry
  FROM fake_requests;

-- a 500, then success: retried
\! test/fake/fakectl fault '{"provider": "stripe", "method": "POST", "path_regex": "^/v1/customers/cus_500$", "action": "status", "status": 500, "count": 1}' >/dev/null
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-500', 'stripe', customer_id => 'cus_500') AS f500 \gset
SELECT celloattr.wait(:f500);
SELECT kind, state, attempts, last_status FROM celloattr.jobs WHERE attribution_id = :f500 ORDER BY stage;
SELECT method, regexp_replace(regexp_replace(url, '^http://[^/]+', ''), 'created%5Bgte%5D=[0-9]+', 'created%5Bgte%5D=<window start>') AS url, status
  FROM celloattr.http_log WHERE attribution_id = :f500 ORDER BY id;

-- a 429 with Retry-After is waited out without using up an attempt
\! test/fake/fakectl fault '{"provider": "stripe", "method": "POST", "path_regex": "^/v1/customers/cus_429$", "action": "rate_limit", "retry_after": 1, "count": 1}' >/dev/null
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-429', 'stripe', customer_id => 'cus_429') AS f429 \gset
SELECT celloattr.wait(:f429);
SELECT kind, state, attempts FROM celloattr.jobs WHERE attribution_id = :f429 ORDER BY stage;
SELECT status, count(*) FROM celloattr.http_log
 WHERE attribution_id = :f429 AND method = 'POST' GROUP BY status ORDER BY status;
SELECT max(started_at) FILTER (WHERE status = 200) - max(started_at) FILTER (WHERE status = 429)
		>= interval '0.9 s' AS waited_retry_after
  FROM celloattr.http_log WHERE attribution_id = :f429 AND method = 'POST';

-- a 400 ends 'failed' with Stripe's message
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-full', 'stripe', customer_id => 'cus_full') AS f400 \gset
SELECT celloattr.wait(:f400);
SELECT state, last_error FROM celloattr.attributions WHERE id = :f400;
SELECT state, attempts, last_status FROM celloattr.jobs WHERE attribution_id = :f400;

-- no secret in the HTTP log; the Authorization header is redacted
SELECT count(*) > 0 AS logged,
	   count(*) FILTER (WHERE request_headers LIKE '%Authorization: [redacted]%') = count(*) AS all_redacted,
	   count(*) FILTER (WHERE concat(url, request_headers, request_body, response_body, error)
						LIKE '%' || 'sk_test_celloattr_secret_0123456789' || '%') AS with_secret
  FROM celloattr.http_log;
SELECT count(*) AS jobs_with_secret FROM celloattr.jobs
 WHERE concat(payload::text, last_error, result::text) LIKE '%' || 'sk_test_celloattr_secret_0123456789' || '%';

-- the worker says who it is
SELECT application_name, backend_type FROM pg_stat_activity
 WHERE application_name LIKE 'celloattr%' ORDER BY 1;
