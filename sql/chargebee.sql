--
-- The Chargebee path end to end, through the worker, against the local fake.
--
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE TEMP TABLE fake_requests (r jsonb);
CREATE TEMP TABLE fake_state (s jsonb);
CREATE TEMP TABLE fake_deliveries (d jsonb);
\! test/fake/fakectl reset
\! test/fake/fakectl seed test/seeds/chargebee.json

-- by id, with payments: two inside the window are re-delivered to Cello's
-- webhook, two older ones go to the support report
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-byid', 'chargebee',
	customer_id => 'cb_byid', organization_id => 'org-1') AS byid \gset
-- by email (with and without meta_data), none, several, deleted
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-email', 'chargebee',
	email => 'email@example.com') AS email \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-nometa', 'chargebee',
	email => 'nometa@example.com') AS nometa \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-none', 'chargebee',
	email => 'nobody@example.com') AS none \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-dup', 'chargebee',
	email => 'dup@example.com') AS dup \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-gone', 'chargebee',
	customer_id => 'cb_gone') AS gone \gset
-- neither an id nor an email (and no custom fields): nothing to look up by
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-nothing', 'chargebee') AS nothing \gset

SELECT celloattr.wait(:byid), celloattr.wait(:email), celloattr.wait(:nometa),
	   celloattr.wait(:none), celloattr.wait(:dup), celloattr.wait(:gone),
	   celloattr.wait(:nothing);

SELECT new_user_id, state, customer_id, last_error
  FROM celloattr.attributions
 WHERE id IN (:byid, :email, :nometa, :none, :dup, :gone, :nothing) ORDER BY id;
SELECT a.new_user_id, j.kind, j.stage, j.state, j.attempts,
	   coalesce(j.payload->'event'->>'id', j.payload->>'customer') AS about
  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
 WHERE a.id IN (:byid, :email) ORDER BY a.id, j.stage, about;

-- meta_data: our keys merged in, every other key (nested ones too) kept
\copy fake_state (s) from program 'test/fake/fakectl state --provider chargebee --copy'
SELECT c.key AS customer, c.value->'meta_data' AS meta_data
  FROM fake_state, jsonb_each(s->'customers') c
 WHERE c.key IN ('cb_byid', 'cb_email', 'cb_nometa') ORDER BY 1;

-- exactly the customer's in-window payment_succeeded events reached Cello's
-- Chargebee webhook, each as the bare event, unchanged
\copy fake_deliveries (d) from program 'test/fake/fakectl deliveries --copy'
SELECT d->>'event_id' AS event, d->>'event_type' AS type,
	   d->'body'->'content'->'customer'->>'id' AS customer, d->>'matches_stored_event' AS unchanged
  FROM fake_deliveries ORDER BY 1;
-- with the webhook's basic auth and as JSON
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider cello-webhook --copy'
SELECT r->>'method' AS method, r->>'path' AS path, r->>'status' AS status,
	   r->'headers'->>'content-type' AS content_type,
	   r->'headers'->>'authorization' = 'Basic ' || encode(convert_to(
		   'cello-product-id' || ':' ||
		   'cello-webhook-secret-4242', 'UTF8'), 'base64') AS basic_auth
  FROM fake_requests ORDER BY r->'body';

-- the older payments are in the support report with the fields of their events
SELECT trigger, invoice_id, price, currency, "interval", seats_used, product_key,
	   subscription_id, event_timestamp < now() - interval '30 days' AS old, reason
  FROM celloattr.support_report(:byid);
SELECT plan FROM celloattr.attributions WHERE id = :byid;

-- what the worker sent to Chargebee for this customer
TRUNCATE fake_requests;
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider chargebee --copy'
SELECT r->>'method' AS method, r->>'path' AS path, r->>'body' AS body, r->>'status' AS status,
	   (r->'headers'->>'chargebee-idempotency-key') IS NOT NULL AS has_key
  FROM fake_requests WHERE r->>'path' LIKE '%cb_byid%' ORDER BY r->>'seq';
-- the event listings: the index's, shared by the payments steps so far
-- (the whole window once, following next_offset, then what is newer: a
-- second first page when a payments step was queued after the first
-- listing started, which depends on how the worker's recording
-- transactions fell, so 1 or 2), and the older payments since the
-- customer was created, listed only for the one customer created before
-- the window
SELECT events_query,
	   CASE WHEN events_query NOT LIKE '%offset=%' AND events_query NOT LIKE '%between%'
				 AND requests BETWEEN 1 AND 2 THEN '1 or 2'
			ELSE requests::text END AS requests
  FROM (SELECT regexp_replace(regexp_replace(regexp_replace(r->>'query',
				 'occurred_at%5Bafter%5D=[0-9]+', 'occurred_at%5Bafter%5D=<window start>'),
				 'occurred_at%5Bbetween%5D=%5B[0-9]+%2C[0-9]+%5D', 'occurred_at%5Bbetween%5D=[<created>,<window start>]'),
				 'offset=[^&]+', 'offset=<next_offset>') AS events_query,
			   count(*) AS requests
		  FROM fake_requests WHERE r->>'path' = '/events'
		 GROUP BY 1) listings
 ORDER BY 1;
-- every POST carries the step's own idempotency key, and Basic auth with the key
SELECT count(*) AS posts, count(*) FILTER (WHERE j.id IS NOT NULL) AS keyed_by_a_step
  FROM fake_requests f
  LEFT JOIN celloattr.jobs j ON j.idempotency_key = f.r->'headers'->>'chargebee-idempotency-key'
 WHERE f.r->>'method' = 'POST';
SELECT count(*) FILTER (WHERE r->'headers'->>'authorization' = 'Basic ' || encode(convert_to(
		   'test_cbkey_celloattr_secret_9876' || ':', 'UTF8'), 'base64')) = count(*) AS api_key_auth
  FROM fake_requests;

-- a conflicting cello_ucc (in meta_data or a custom field) is refused; forced, overwritten
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-conflict', 'chargebee',
	customer_id => 'cb_conflict') AS conflict \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-cfconflict', 'chargebee',
	customer_id => 'cb_cfconflict') AS cfconflict \gset
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-forced', 'chargebee',
	customer_id => 'cb_forced', force => true, reason => 'ticket 99: referrer verified') AS forced \gset
SELECT celloattr.wait(:conflict), celloattr.wait(:cfconflict), celloattr.wait(:forced);
SELECT new_user_id, state, last_error FROM celloattr.attributions
 WHERE id IN (:conflict, :cfconflict, :forced) ORDER BY id;
TRUNCATE fake_state;
\copy fake_state (s) from program 'test/fake/fakectl state --provider chargebee --copy'
SELECT c.key AS customer, c.value->'meta_data' AS meta_data
  FROM fake_state, jsonb_each(s->'customers') c
 WHERE c.key IN ('cb_conflict', 'cb_forced') ORDER BY 1;

-- custom-fields mode: found by cf_new_user_id, written as cf_ fields
ALTER SYSTEM SET celloattr.chargebee_custom_fields = on;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-cf', 'chargebee',
	organization_id => 'org-cf') AS cf \gset
SELECT celloattr.wait(:cf);
SELECT state, customer_id, last_error, plan FROM celloattr.attributions WHERE id = :cf;
TRUNCATE fake_state;
\copy fake_state (s) from program 'test/fake/fakectl state --provider chargebee --copy'
SELECT c.key AS customer, c.value->>'cf_cello_ucc' AS cf_cello_ucc,
	   c.value->>'cf_new_user_id' AS cf_new_user_id,
	   c.value->>'cf_new_user_organization_id' AS cf_org, c.value->'meta_data' AS meta_data
  FROM fake_state, jsonb_each(s->'customers') c WHERE c.key = 'cb_cf';
TRUNCATE fake_requests;
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider chargebee --copy'
SELECT r->>'method' AS method, r->>'path' AS path, r->>'query' AS query, r->>'body' AS body
  FROM fake_requests WHERE r->>'path' LIKE '/customers%' AND r->>'query' LIKE '%cf_new_user_id%'
	OR r->>'path' = '/customers/cb_cf' ORDER BY r->>'seq';
ALTER SYSTEM RESET celloattr.chargebee_custom_fields;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);

-- a dry run reads, plans, and changes nothing
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-dry', 'chargebee',
	email => 'dry@example.com', dry_run => true) AS dry \gset
SELECT celloattr.wait(:dry);
SELECT state, plan FROM celloattr.attributions WHERE id = :dry;
SELECT kind, state, payload->'event'->>'id' AS event FROM celloattr.jobs
 WHERE attribution_id = :dry ORDER BY stage;
SELECT count(*) AS support_rows FROM celloattr.support_report(:dry);
TRUNCATE fake_requests;
\copy fake_requests (r) from program 'test/fake/fakectl requests --copy'
SELECT count(*) FILTER (WHERE r->>'method' = 'POST' AND r->>'path' LIKE '%cb_dry%') AS posts_to_dry,
	   count(*) FILTER (WHERE r->>'provider' = 'cello-webhook' AND r->>'body' LIKE '%ev_dry%') AS redeliveries_of_dry
  FROM fake_requests;

-- a 429 with Retry-After is waited out without using up an attempt
\! test/fake/fakectl fault '{"provider": "chargebee", "method": "POST", "path_regex": "^/customers/cb_429$", "action": "rate_limit", "retry_after": 1, "count": 1}' >/dev/null
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-429', 'chargebee', customer_id => 'cb_429') AS f429 \gset
SELECT celloattr.wait(:f429);
SELECT kind, state, attempts FROM celloattr.jobs WHERE attribution_id = :f429 ORDER BY stage;
SELECT status, count(*) FROM celloattr.http_log
 WHERE attribution_id = :f429 AND method = 'POST' GROUP BY status ORDER BY status;
SELECT max(started_at) FILTER (WHERE status = 200) - max(started_at) FILTER (WHERE status = 429)
		>= interval '0.9 s' AS waited_retry_after
  FROM celloattr.http_log WHERE attribution_id = :f429 AND method = 'POST';

-- Cello's webhook answers 500 once: the re-delivery is retried
\! test/fake/fakectl fault '{"provider": "cello-webhook", "method": "POST", "path_regex": "^/chargebee$", "action": "status", "status": 500, "count": 1}' >/dev/null
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-500', 'chargebee', customer_id => 'cb_500') AS f500 \gset
SELECT celloattr.wait(:f500);
SELECT kind, state, attempts, last_status FROM celloattr.jobs WHERE attribution_id = :f500 ORDER BY stage;

-- no secret in the HTTP log or the jobs; the Authorization header is redacted
SELECT count(*) > 0 AS logged,
	   count(*) FILTER (WHERE request_headers LIKE '%Authorization: [redacted]%') = count(*) AS all_redacted,
	   count(*) FILTER (WHERE concat(url, request_headers, request_body, response_body, error)
						LIKE '%' || 'test_cbkey_celloattr_secret_9876' || '%') AS with_api_key,
	   count(*) FILTER (WHERE concat(url, request_headers, request_body, response_body, error)
						LIKE '%' || 'cello-webhook-secret-4242' || '%') AS with_password,
	   count(*) FILTER (WHERE concat(url, request_headers, request_body, response_body, error)
						LIKE '%' || encode(convert_to('test_cbkey_celloattr_secret_9876' || ':', 'UTF8'), 'base64') || '%') AS with_basic_auth
  FROM celloattr.http_log WHERE provider IN ('chargebee', 'cello');
SELECT count(*) AS jobs_with_secret FROM celloattr.jobs
 WHERE concat(payload::text, last_error, result::text) LIKE '%' || 'test_cbkey_celloattr_secret_9876' || '%'
	OR concat(payload::text, last_error, result::text) LIKE '%' || 'cello-webhook-secret-4242' || '%';
