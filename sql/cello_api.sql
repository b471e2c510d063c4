--
-- The Cello API path, the mixed paths ("Cello API & webhook") and the
-- support report, end to end through the worker against the local fake.
--
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE TEMP TABLE fake_requests (r jsonb);
CREATE TEMP TABLE fake_state (s jsonb);
CREATE TEMP TABLE fake_deliveries (d jsonb);
\! test/fake/fakectl reset
\! test/fake/fakectl seed test/seeds/cello.json

-- two signups at once, with transactions registered before the signup was
-- sent (they wait for it); one token serves them all
BEGIN;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-api', 'cello_api',
	email => 'api@example.com', name => 'Ada API', organization_id => 'org-api',
	signed_up_at => '2024-05-01 09:30:00+00') AS api \gset
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-api2', 'cello_api',
	email => 'api2@example.com', signed_up_at => '2024-05-02 10:00:00+00') AS api2 \gset
SELECT celloattr.cello_transaction('user-api', 'inv_1', 49, 'eur', now() - interval '2 days',
	'monthly', 'Team Plan', 'sub_1', 3) > 0 AS tx1;
SELECT celloattr.cello_transaction('user-api', 'inv_1', 49, 'EUR', now() - interval '1 day',
	'monthly', NULL, 'sub_1', trigger => 'charge-refunded') > 0 AS refund;
COMMIT;
SELECT celloattr.wait(:api), celloattr.wait(:api2);
-- a transaction registered after the signup was sent goes at once
SELECT celloattr.cello_transaction('user-api', 'inv_2', 120.50, 'EUR', now() - interval '1 hour',
	'yearly', 'Scale, annual', 'sub_2') > 0 AS tx2;
SELECT celloattr.wait(:api);

SELECT a.new_user_id, j.kind, j.stage, j.state, j.attempts, j.payload->>'invoice_id' AS invoice
  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
 WHERE a.id IN (:api, :api2) ORDER BY a.id, j.stage, j.id;

-- what Cello received: the ucc checked first, then the events, each valid
\copy fake_state (s) from program 'test/fake/fakectl state --provider cello --copy'
SELECT e->>'trigger' AS trigger, e->>'newUserId' AS user, e->>'ucc' AS ucc,
	   e->>'invoiceId' AS invoice
  FROM fake_state, jsonb_array_elements(s->'events') e ORDER BY 2, 4 NULLS FIRST, 1;
-- the signup, in full
SELECT jsonb_pretty(e->'body') AS signup
  FROM fake_state, jsonb_array_elements(s->'events') e
 WHERE e->>'newUserId' = 'user-api' AND e->>'trigger' = 'new-signup';
-- the transactions: every field Cello's guide requires, price in major
-- units, the refund with the product key of its payment
SELECT e->'body'->'payload' AS payload, e->'body'->'context'->'subscription' AS subscription,
	   e->'body'->'context'->'newUser' AS new_user,
	   e->'body'->'context'->'event'->>'timestamp' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$' AS rfc3339
  FROM fake_state, jsonb_array_elements(s->'events') e
 WHERE e->>'trigger' <> 'new-signup' ORDER BY e->>'invoiceId', e->>'trigger';
-- what was acknowledged is on record with the step
SELECT j.kind, j.result->'acknowledged_event'->'context'->'event'->>'trigger' AS acknowledged
  FROM celloattr.jobs j WHERE j.attribution_id = :api ORDER BY j.id;

-- one POST /token for all of it (the key pair, never the refresh token yet)
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider cello --copy'
SELECT r->>'method' AS method, r->>'path' AS path, count(*) AS requests
  FROM fake_requests GROUP BY 1, 2 ORDER BY 1, 2;
SELECT (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(r->'json') k) AS token_request_fields,
	   r->>'status' AS status
  FROM fake_requests WHERE r->>'path' = '/token';

-- the access token expires (at Cello, before we expect it): the next call
-- answers 401, the refresh token gets a new one, the call is made again
SELECT max((r->>'seq')::int) AS since FROM fake_requests \gset
\! test/fake/fakectl expire-cello-tokens >/dev/null
TRUNCATE fake_requests;
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-refresh', 'cello_api',
	email => 'refresh@example.com') AS refresh \gset
SELECT celloattr.wait(:refresh);
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider cello --copy'
SELECT r->>'method' AS method, r->>'path' AS path, r->>'status' AS status,
	   CASE WHEN jsonb_typeof(r->'json') = 'object' THEN
		   (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(r->'json') k) END AS fields
  FROM fake_requests WHERE (r->>'seq')::int > :since ORDER BY (r->>'seq')::int;

-- the refresh token expires too: the refresh is refused, the key pair logs in again
SELECT max((r->>'seq')::int) AS since FROM fake_requests \gset
\! test/fake/fakectl expire-cello-tokens --refresh >/dev/null
TRUNCATE fake_requests;
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-relogin', 'cello_api',
	email => 'relogin@example.com') AS relogin \gset
SELECT celloattr.wait(:relogin);
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider cello --copy'
SELECT r->>'method' AS method, r->>'path' AS path, r->>'status' AS status,
	   CASE WHEN jsonb_typeof(r->'json') = 'object' THEN
		   (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(r->'json') k) END AS fields
  FROM fake_requests WHERE (r->>'seq')::int > :since ORDER BY (r->>'seq')::int;

-- a 401 on POST /events: a new token, the event once more, success
\! test/fake/fakectl fault '{"provider": "cello", "method": "POST", "path_regex": "^/events$", "action": "status", "status": 401, "count": 1}' >/dev/null
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-401', 'cello_api',
	email => 'f401@example.com') AS f401 \gset
SELECT celloattr.wait(:f401);
SELECT method, regexp_replace(url, '^http://[^/]+', '') AS url, status
  FROM celloattr.http_log WHERE attribution_id = :f401 ORDER BY id;
SELECT state, attempts FROM celloattr.jobs WHERE attribution_id = :f401;

-- a ucc Cello does not know: failed with a clear message, nothing sent
SELECT celloattr.cello_attribute('Zz9Zz9Zz9Zz', 'user-baducc', 'cello_api',
	email => 'bad@example.com') AS baducc \gset
SELECT celloattr.wait(:baducc);
SELECT state, last_error FROM celloattr.attributions WHERE id = :baducc;
TRUNCATE fake_state;
\copy fake_state (s) from program 'test/fake/fakectl state --provider cello --copy'
SELECT count(*) AS events_of_baducc
  FROM fake_state, jsonb_array_elements(s->'events') e WHERE e->>'newUserId' = 'user-baducc';

-- a transaction older than the window by the time it is sent goes to the
-- support report instead (the worker is paused while the window shrinks)
ALTER SYSTEM SET celloattr.paused = on;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-late', 'cello_api',
	email => 'late@example.com') AS late \gset
SELECT celloattr.cello_transaction('user-late', 'inv_late', 19, 'USD', now() - interval '20 days',
	'monthly', 'Starter') > 0 AS late_tx;
ALTER SYSTEM SET celloattr.transaction_window = '10d';
ALTER SYSTEM SET celloattr.paused = off;
SELECT pg_reload_conf();
SELECT celloattr.wait(:late);
ALTER SYSTEM RESET celloattr.transaction_window;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT j.kind, j.state, a.state AS attribution
  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
 WHERE a.id = :late ORDER BY j.stage;
SELECT trigger, invoice_id, price, currency, "interval", product_key, reason
  FROM celloattr.support_report(:late);

-- a transaction whose event Cello keeps refusing with 5xx: given up after
-- its attempts, it goes to the support report
ALTER SYSTEM SET celloattr.max_attempts = 3;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\! test/fake/fakectl fault '{"provider": "cello", "method": "POST", "path_regex": "^/events$", "action": "status", "status": 503, "count": 0}' >/dev/null
SELECT celloattr.cello_transaction('user-api2', 'inv_503', 10, 'EUR', now() - interval '3 days',
	'one-time', 'Pro License') > 0 AS tx503;
SELECT celloattr.wait(:api2);
\! test/fake/fakectl clear-faults >/dev/null
ALTER SYSTEM RESET celloattr.max_attempts;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT j.kind, j.state, j.attempts, j.last_error, a.state AS attribution
  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
 WHERE a.id = :api2 ORDER BY j.stage, j.id;
SELECT trigger, invoice_id, price, currency, "interval", product_key, reason
  FROM celloattr.support_report(:api2);

-- Secrets files of the tests below, in the data directory with the
-- server's owner and mode 0600 as the worker requires (COPY TO a file would
-- make it 0644, which the worker refuses).
CREATE FUNCTION pg_temp.write_secrets(file text, lines text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format('COPY (SELECT unnest(%L::text[])) TO PROGRAM %L', lines,
				   format('umask 077 && cat > %s', file));
END $$;

-- no Cello credentials: the signup and its transactions go to the report
SELECT pg_temp.write_secrets('nokey.secrets', ARRAY['# no Cello key pair']);
ALTER SYSTEM SET celloattr.secrets_file = 'nokey.secrets';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-nokey', 'cello_api',
	email => 'nokey@example.com', name => 'No Key', signed_up_at => '2024-06-01 12:00:00+00') AS nokey \gset
SELECT celloattr.wait(:nokey);
SELECT celloattr.cello_transaction('user-nokey', 'inv_nokey', 99, 'GBP', now() - interval '5 days',
	'quarterly', 'Team Plan', 'sub_nokey', 4) > 0 AS nokey_tx;
SELECT celloattr.wait(:nokey);
ALTER SYSTEM RESET celloattr.secrets_file;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT j.kind, j.state, a.state AS attribution
  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
 WHERE a.id = :nokey ORDER BY j.stage;

-- a key pair Cello rejects: failed with Cello's message
SELECT pg_temp.write_secrets('badkey.secrets', ARRAY[
	'cello_access_key_id = ''AKID-celloattr-test''',
	'cello_secret_access_key = ''not-the-right-secret-0000''']);
ALTER SYSTEM SET celloattr.secrets_file = 'badkey.secrets';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-badkey', 'cello_api',
	email => 'badkey@example.com') AS badkey \gset
SELECT celloattr.wait(:badkey);
ALTER SYSTEM RESET celloattr.secrets_file;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT state, last_error FROM celloattr.attributions WHERE id = :badkey;
SELECT count(*) AS logged_with_the_wrong_secret FROM celloattr.http_log
 WHERE concat(request_body, response_body) LIKE '%not-the-right-secret-0000%';

-- the mixed path with Stripe: the signup through Cello's API, then the
-- Stripe customer's metadata
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-mixed-stripe', 'stripe',
	customer_id => 'cus_mixed', email => 'mixed@example.com', signup_via_api => true) AS mixs \gset
-- and with Chargebee, whose recent payment is re-delivered to Cello's webhook
SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-mixed-cb', 'chargebee',
	customer_id => 'cb_mixed', email => 'cbmixed@example.com', signup_via_api => true) AS mixc \gset
-- an unknown ucc stops the mixed path before the gateway is touched
SELECT celloattr.cello_attribute('Zz9Zz9Zz9Zz', 'user-mixed-bad', 'stripe',
	customer_id => 'cus_baducc', signup_via_api => true) AS mixbad \gset
SELECT celloattr.wait(:mixs), celloattr.wait(:mixc), celloattr.wait(:mixbad);
SELECT a.new_user_id, j.kind, j.stage, j.state
  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
 WHERE a.id IN (:mixs, :mixc, :mixbad) ORDER BY a.id, j.stage, j.id;
SELECT new_user_id, state, last_error FROM celloattr.attributions
 WHERE id IN (:mixs, :mixc, :mixbad) ORDER BY id;
TRUNCATE fake_state;
\copy fake_state (s) from program 'test/fake/fakectl state --copy'
SELECT e->>'newUserId' AS user, e->>'trigger' AS trigger, e->>'ucc' AS ucc
  FROM fake_state, jsonb_array_elements(s->'cello'->'events') e
 WHERE e->>'newUserId' LIKE 'user-mixed%' ORDER BY 1;
SELECT s->'stripe'->'customers'->'cus_mixed'->'metadata' AS cus_mixed,
	   s->'stripe'->'customers'->'cus_baducc'->'metadata' AS cus_baducc,
	   s->'chargebee'->'customers'->'cb_mixed'->'meta_data' AS cb_mixed
  FROM fake_state;
\copy fake_deliveries (d) from program 'test/fake/fakectl deliveries --copy'
SELECT d->>'event_id' AS event, d->>'matches_stored_event' AS unchanged FROM fake_deliveries;

-- no token, key or secret in the HTTP log or the jobs; the token exchange
-- is logged with its secrets redacted
TRUNCATE fake_requests;
\copy fake_requests (r) from program 'test/fake/fakectl requests --provider cello --copy'
CREATE TEMP TABLE secrets AS
SELECT DISTINCT substr(r->'headers'->>'authorization', 8) AS secret FROM fake_requests
 WHERE r->'headers'->>'authorization' LIKE 'Bearer %'
UNION SELECT 'cello-secret-access-key-1234'
UNION SELECT 'AKID-celloattr-test';
SELECT count(*) >= 4 AS tokens_seen FROM secrets;
SELECT count(*) AS log_rows_with_a_secret FROM celloattr.http_log h, secrets s
 WHERE concat(h.url, h.request_headers, h.request_body, h.response_body, h.error) LIKE '%' || s.secret || '%';
SELECT count(*) AS job_rows_with_a_secret FROM celloattr.jobs j, secrets s
 WHERE concat(j.payload::text, j.last_error, j.result::text) LIKE '%' || s.secret || '%';
SELECT DISTINCT request_body, regexp_replace(regexp_replace(response_body, '"expiresIn":[0-9]+', '"expiresIn":N'),
		 '"timestamp":"[^"]*"', '"timestamp":"<time>"') AS response_body, status
  FROM celloattr.http_log WHERE url LIKE '%/token' ORDER BY status, request_body;

-- the support report, as Cello support gets it: one CSV row per event
-- (the payment dates vary with the day the test runs, so they are left out here)
COPY (SELECT ucc, new_user_id, price, currency, new_user_email, new_user_name,
			 new_user_organization_id, trigger, subscription_id, invoice_id, "interval",
			 seats_used, product_key, reason
		FROM celloattr.support_report() WHERE attribution_id >= :api
	   ORDER BY new_user_id, trigger, invoice_id) TO STDOUT WITH (FORMAT csv, HEADER);
SELECT new_user_id, trigger, event_timestamp FROM celloattr.support_report(:nokey)
 WHERE trigger = 'new-signup';
