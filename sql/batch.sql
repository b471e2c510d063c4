--
-- A statement that queues many repairs (a repair query, an attribute
-- trigger on a bulk INSERT or COPY) writes them in batches when it ends:
-- the ids come back at once, and nothing can see the batch missing.  The
-- worker is paused here.
--
\set SHOW_CONTEXT never

CREATE TABLE batch_users AS
SELECT i AS id, 'pNRB1aYqArN' AS code, 'b' || i || '@example.com' AS email
  FROM generate_series(1, 2500) i;

-- 2,500 repairs in one statement (several batches): every id distinct,
-- every row and first step there
CREATE TABLE batch_ids AS
SELECT id AS user_id, celloattr.cello_attribute(code, 'batch-' || id, 'stripe', email => email) AS attribution_id
  FROM batch_users;
SELECT count(*) AS calls, count(DISTINCT attribution_id) AS ids FROM batch_ids;
SELECT count(*) AS attributions,
	   count(*) FILTER (WHERE a.email = 'b' || substr(a.new_user_id, 7) || '@example.com') AS right_email,
	   count(*) FILTER (WHERE a.state = 'queued' AND a.requested_by = session_user) AS queued
  FROM celloattr.attributions a JOIN batch_ids b ON b.attribution_id = a.id
 WHERE a.new_user_id = 'batch-' || b.user_id;
SELECT count(*) AS steps,
	   count(*) FILTER (WHERE j.kind = 'stripe_customer' AND j.state = 'queued'
						AND j.idempotency_key = 'ca-' || i.install_id || '-' || j.attribution_id || '-stripe_customer') AS keyed
  FROM celloattr.jobs j JOIN batch_ids b USING (attribution_id)
	   CROSS JOIN celloattr.installation i;

-- running the repair query again returns the same ids and queues nothing
SELECT count(*) FILTER (WHERE celloattr.cello_attribute(code, 'batch-' || u.id, 'stripe') = b.attribution_id) AS same_ids
  FROM batch_users u JOIN batch_ids b ON b.user_id = u.id;
SELECT count(*) AS attributions FROM celloattr.attributions WHERE new_user_id LIKE 'batch-%';

-- the same user twice in one statement: one attribution
SELECT count(DISTINCT celloattr.cello_attribute('pNRB1aYqArN', 'twice', 'stripe')) AS ids
  FROM generate_series(1, 3);
-- another code for a user queued earlier in the same statement: a dispute,
-- and the whole statement is undone
DO $$
BEGIN
	PERFORM celloattr.cello_attribute(c, 'disputed', 'stripe')
	   FROM (VALUES ('pNRB1aYqArN'), ('UPobYBDuu0N')) v(c);
EXCEPTION WHEN unique_violation THEN
	RAISE NOTICE '%', regexp_replace(SQLERRM, 'attribution [0-9]+', 'attribution N');
END
$$;
SELECT count(*) AS disputed FROM celloattr.attributions WHERE new_user_id = 'disputed';
-- an invalid row late in a statement undoes the rows before it
SELECT celloattr.cello_attribute(CASE WHEN i = 1500 THEN 'bad' ELSE 'pNRB1aYqArN' END, 'undone-' || i, 'stripe')
  FROM generate_series(1, 2000) i;
SELECT count(*) AS undone FROM celloattr.attributions WHERE new_user_id LIKE 'undone-%';

-- what reads the tables in the same statement or transaction sees the batch
SELECT celloattr.wait(celloattr.cello_attribute('pNRB1aYqArN', 'waited', 'stripe'), '1 ms');
BEGIN;
DO $$
DECLARE
	attr_id bigint;
	st text;
BEGIN
	attr_id := celloattr.cello_attribute('pNRB1aYqArN', 'in-plpgsql', 'stripe');
	SELECT state INTO st FROM celloattr.attributions WHERE id = attr_id;
	RAISE NOTICE 'the next statement sees it: %', st;
END
$$;
SELECT count(*) AS seen FROM celloattr.attributions WHERE new_user_id = 'in-plpgsql';
ROLLBACK;
SELECT count(*) AS rolled_back FROM celloattr.attributions WHERE new_user_id = 'in-plpgsql';

-- a rolled-back savepoint takes its part of the batch with it
BEGIN;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'kept', 'stripe') > 0 AS queued;
SAVEPOINT s;
SELECT count(celloattr.cello_attribute('pNRB1aYqArN', 'dropped-' || i, 'stripe')) FROM generate_series(1, 10) i;
ROLLBACK TO s;
COMMIT;
SELECT new_user_id FROM celloattr.attributions WHERE new_user_id IN ('kept') OR new_user_id LIKE 'dropped-%';
-- a plpgsql exception block around the calls: the rows of a block that
-- fails go, the others stay
DO $$
BEGIN
	FOR i IN 1..4 LOOP
		BEGIN
			PERFORM celloattr.cello_attribute('pNRB1aYqArN', 'block-' || i, 'stripe');
			IF i % 2 = 0 THEN
				RAISE EXCEPTION 'block % fails', i;
			END IF;
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
	END LOOP;
END
$$;
SELECT new_user_id FROM celloattr.attributions WHERE new_user_id LIKE 'block-%' ORDER BY 1;
-- rows of the transaction written inside a subtransaction that then fails
-- would be lost: the transaction refuses to commit instead
BEGIN;
DO $$
DECLARE
	attr_id bigint;
BEGIN
	attr_id := celloattr.cello_attribute('pNRB1aYqArN', 'exposed', 'stripe');
	BEGIN
		PERFORM 1 FROM celloattr.attributions WHERE id = attr_id;
		RAISE EXCEPTION 'fails after writing the batch';
	EXCEPTION WHEN raise_exception THEN
		NULL;
	END;
END
$$;
COMMIT;
SELECT count(*) AS exposed FROM celloattr.attributions WHERE new_user_id = 'exposed';

-- an attribute trigger on a bulk INSERT and on COPY
CREATE TABLE batch_signups (id bigint PRIMARY KEY, referral_code text, email text);
CREATE TRIGGER cello AFTER INSERT ON batch_signups FOR EACH ROW
	WHEN (NEW.referral_code IS NOT NULL)
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=referral_code', 'new_user_id=id', 'gateway=stripe', 'email=email');
INSERT INTO batch_signups
SELECT i, CASE WHEN i % 10 = 0 THEN 'pNRB1aYqArN' END, 's' || i || '@example.com'
  FROM generate_series(1, 3000) i;
SELECT count(*) AS from_insert FROM celloattr.attributions a
  JOIN batch_signups s ON a.new_user_id = s.id::text AND a.email = s.email;
BEGIN;
COPY batch_signups FROM stdin;
90001	UPobYBDuu0N	copy1@example.com
90002	\N	copy2@example.com
90003	UIPIWa2Hnnr	copy3@example.com
\.
SELECT new_user_id, ucc FROM celloattr.attributions WHERE new_user_id LIKE '9000_' ORDER BY 1;
COMMIT;

-- the application role queues a batch too (it is written as the owner),
-- and a search_path set to trap it changes nothing
CREATE ROLE batch_app LOGIN IN ROLE celloattr_app;
CREATE SCHEMA batch_trap;
GRANT USAGE ON SCHEMA batch_trap TO batch_app;
CREATE FUNCTION batch_trap.cat(text, text) RETURNS text
	LANGUAGE sql AS 'SELECT ''HACKED''';
CREATE OPERATOR batch_trap.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = batch_trap.cat);
SET ROLE batch_app;
SET search_path = batch_trap, public, pg_catalog;
SELECT count(celloattr.cello_attribute('pNRB1aYqArN', 'app-' || i, 'stripe')) FROM generate_series(1, 5) i;
RESET search_path;
SELECT count(*) AS by_app, count(*) FILTER (WHERE j.idempotency_key LIKE 'ca-%') AS keys_untouched
  FROM celloattr.attributions a JOIN celloattr.jobs j ON j.attribution_id = a.id
 WHERE a.new_user_id LIKE 'app-%' AND a.requested_by = 'batch_app';
RESET ROLE;
DROP SCHEMA batch_trap CASCADE;
DROP ROLE batch_app;
DROP TABLE batch_users, batch_ids, batch_signups;
