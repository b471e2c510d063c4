--
-- Privileges: secrets stay with superusers; the application role can queue
-- and follow repairs but not read the HTTP log, steer the queue or write it.
--
\set SHOW_CONTEXT never
CREATE ROLE app_login LOGIN IN ROLE celloattr_app;
CREATE ROLE ops_login LOGIN IN ROLE celloattr_operator;
CREATE ROLE stranger LOGIN;

-- no setting holds a secret, not even for a superuser: the keys are in the
-- secrets file (t/006_secrets.pl reads every route as pg_monitor)
SELECT current_setting('celloattr.stripe_secret_key') AS stripe_secret_key,
	   current_setting('celloattr.secrets_file') LIKE '/%.secrets' AS secrets_file_set;
-- and a value for a setting of 1.0 is refused, pointing to the file
ALTER SYSTEM SET celloattr.chargebee_api_key = 'test_cbkey_celloattr_secret_9876';
ALTER SYSTEM SET celloattr.cello_secret_access_key = '';
ALTER SYSTEM RESET celloattr.cello_secret_access_key;

SET ROLE app_login;
SHOW celloattr.stripe_secret_key;
SELECT current_setting('celloattr.chargebee_api_key');
SELECT count(*) AS listed_old_secret_settings FROM pg_settings
 WHERE name IN ('celloattr.stripe_secret_key', 'celloattr.chargebee_api_key',
				'celloattr.chargebee_webhook_password', 'celloattr.cello_secret_access_key');
-- nor can it set them, or the URLs the keys are sent to
SET celloattr.stripe_api_url = 'http://evil.example';
SET celloattr.allow_http = on;

-- the API works for the application role
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-app', 'stripe') AS app_attr \gset
SELECT state, requested_by FROM celloattr.attributions WHERE id = :app_attr;
SELECT celloattr.wait(:app_attr, '1 ms');
SELECT count(*) >= 0 AS can_read_jobs FROM celloattr.jobs;
SELECT count(*) >= 0 AS can_read_report FROM celloattr.support_report();
-- but not the HTTP log, the operator levers, or the tables themselves
SELECT count(*) FROM celloattr.http_log;
SELECT celloattr.retry(:app_attr);
SELECT celloattr.cancel(:app_attr);
INSERT INTO celloattr.jobs (attribution_id, kind, idempotency_key) VALUES (:app_attr, 'x', 'x');
UPDATE celloattr.attributions SET ucc = 'UPobYBDuu0N' WHERE id = :app_attr;
DELETE FROM celloattr.jobs;
RESET ROLE;

-- search_path tricks do not reach the SECURITY DEFINER functions
CREATE SCHEMA trap;
GRANT USAGE, CREATE ON SCHEMA trap TO app_login;
SET ROLE app_login;
CREATE FUNCTION trap.nextval(regclass) RETURNS bigint LANGUAGE sql AS 'SELECT 424242::bigint';
CREATE FUNCTION trap.upper(text) RETURNS text LANGUAGE sql AS 'SELECT ''HACKED''';
SET search_path = trap, public;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-trap', 'stripe') <> 424242 AS not_trapped;
RESET search_path;
RESET ROLE;

-- the operator role steers
SET ROLE ops_login;
SELECT count(*) >= 0 AS reads_log FROM celloattr.http_log;
SELECT celloattr.cancel(:app_attr) AS cancelled;
RESET ROLE;

-- everyone else gets nothing
SET ROLE stranger;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-x', 'stripe');
SELECT count(*) FROM celloattr.attributions;
RESET ROLE;

DROP SCHEMA trap CASCADE;
DROP ROLE app_login, ops_login, stranger;
