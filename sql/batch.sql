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
-- Rows of an enclosing level that a batch wrote inside a subtransaction
-- that then fails are given back to the batch, with their ids, and written
-- again.  batch_rows(prefix): the attributions of users named so, their
-- first steps, and the steps whose idempotency key holds their id.
CREATE FUNCTION batch_rows(prefix text, OUT attributions bigint, OUT steps bigint, OUT keyed bigint)
LANGUAGE sql AS $$
	SELECT (SELECT count(*) FROM celloattr.attributions WHERE new_user_id LIKE prefix || '%'),
		   count(j.id),
		   count(j.id) FILTER (WHERE j.idempotency_key = 'ca-' || i.install_id || '-' || a.id || '-' || j.kind)
	  FROM celloattr.attributions a JOIN celloattr.jobs j ON j.attribution_id = a.id
		   CROSS JOIN celloattr.installation i
	 WHERE a.new_user_id LIKE prefix || '%'
$$;
-- the ids the callers were given
CREATE TABLE batch_held (user_id text, attr_id bigint);

-- the reported case: an id taken, then a block that reads the table (which
-- writes the batch inside the block's subtransaction) and fails
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
	INSERT INTO batch_held VALUES ('exposed', attr_id);
END
$$;
COMMIT;
SELECT * FROM batch_rows('exposed');
SELECT count(*) AS held_id FROM celloattr.attributions a JOIN batch_held h ON a.id = h.attr_id
 WHERE a.new_user_id = 'exposed';

-- the same, three transactions in a row; the same user called again after
-- the block returns the id the caller holds
CREATE FUNCTION batch_give_back(user_id text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	attr_id bigint;
	again bigint;
BEGIN
	attr_id := celloattr.cello_attribute('pNRB1aYqArN', user_id, 'stripe');
	BEGIN
		PERFORM 1 FROM celloattr.attributions WHERE id = attr_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'attribution % is not visible in the block', attr_id
				USING ERRCODE = 'no_data_found';
		END IF;
		RAISE EXCEPTION 'fails after writing the batch';
	EXCEPTION WHEN raise_exception THEN
		NULL;
	END;
	again := celloattr.cello_attribute('pNRB1aYqArN', user_id, 'stripe');
	IF again <> attr_id THEN
		RAISE EXCEPTION 'the repeat returned %, the first call %', again, attr_id;
	END IF;
	RETURN attr_id;
END
$$;
BEGIN;
INSERT INTO batch_held SELECT 'again-1', batch_give_back('again-1');
COMMIT;
BEGIN;
INSERT INTO batch_held SELECT 'again-2', batch_give_back('again-2');
COMMIT;
BEGIN;
INSERT INTO batch_held SELECT 'again-3', batch_give_back('again-3');
COMMIT;
SELECT h.user_id, count(a.id) AS attributions, count(j.id) AS steps
  FROM batch_held h
	   LEFT JOIN celloattr.attributions a ON a.id = h.attr_id AND a.new_user_id = h.user_id
	   LEFT JOIN celloattr.jobs j ON j.attribution_id = a.id
 WHERE h.user_id LIKE 'again-%' GROUP BY 1 ORDER BY 1;
SELECT * FROM batch_rows('again-');

-- three nested blocks, each failing after writing the batch: each level
-- sees what its enclosing levels queued, and only the outermost row stays
DO $$
DECLARE
	ids bigint[] := '{}';
	seen int;
BEGIN
	ids := ids || celloattr.cello_attribute('pNRB1aYqArN', 'nested-1', 'stripe');
	BEGIN
		ids := ids || celloattr.cello_attribute('pNRB1aYqArN', 'nested-2', 'stripe');
		BEGIN
			ids := ids || celloattr.cello_attribute('pNRB1aYqArN', 'nested-3', 'stripe');
			BEGIN
				ids := ids || celloattr.cello_attribute('pNRB1aYqArN', 'nested-4', 'stripe');
				SELECT count(*) INTO seen FROM celloattr.attributions WHERE id = ANY (ids);
				RAISE NOTICE 'the third block sees %', seen;
				RAISE EXCEPTION 'the third block fails';
			EXCEPTION WHEN raise_exception THEN
				NULL;
			END;
			SELECT count(*) INTO seen FROM celloattr.attributions WHERE id = ANY (ids);
			RAISE NOTICE 'the second block sees %', seen;
			RAISE EXCEPTION 'the second block fails';
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
		SELECT count(*) INTO seen FROM celloattr.attributions WHERE id = ANY (ids);
		RAISE NOTICE 'the first block sees %', seen;
		RAISE EXCEPTION 'the first block fails';
	EXCEPTION WHEN raise_exception THEN
		NULL;
	END;
	INSERT INTO batch_held VALUES ('nested-1', ids[1]);
END
$$;
SELECT a.new_user_id, a.id = h.attr_id AS held_id
  FROM celloattr.attributions a LEFT JOIN batch_held h ON h.user_id = a.new_user_id
 WHERE a.new_user_id LIKE 'nested-%' ORDER BY 1;
SELECT * FROM batch_rows('nested-');

-- a block that writes the batch and succeeds, inside one that then fails:
-- the rows of the failing block go (its child's INSERT with them), the
-- outer row comes back
DO $$
DECLARE
	ids bigint[] := '{}';
BEGIN
	ids := ids || celloattr.cello_attribute('pNRB1aYqArN', 'merged-1', 'stripe');
	BEGIN
		ids := ids || celloattr.cello_attribute('pNRB1aYqArN', 'merged-2', 'stripe');
		BEGIN
			ids := ids || celloattr.cello_attribute('pNRB1aYqArN', 'merged-3', 'stripe');
			PERFORM 1 FROM celloattr.attributions WHERE id = ANY (ids);
		END;
		RAISE EXCEPTION 'the outer block fails';
	EXCEPTION WHEN raise_exception THEN
		NULL;
	END;
	INSERT INTO batch_held VALUES ('merged-1', ids[1]);
END
$$;
SELECT a.new_user_id, a.id = h.attr_id AS held_id
  FROM celloattr.attributions a LEFT JOIN batch_held h ON h.user_id = a.new_user_id
 WHERE a.new_user_id LIKE 'merged-%' ORDER BY 1;
SELECT * FROM batch_rows('merged-');

-- savepoints in SQL around statements that give rows back; after ROLLBACK
-- TO, the same user queues anew, once
BEGIN;
SELECT batch_give_back('savepoint-1') > 0 AS queued;
SAVEPOINT a;
SELECT batch_give_back('savepoint-2') > 0 AS queued;
SAVEPOINT b;
SELECT batch_give_back('savepoint-3') > 0 AS queued;
ROLLBACK TO SAVEPOINT b;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'savepoint-3', 'stripe')
	 = celloattr.cello_attribute('pNRB1aYqArN', 'savepoint-3', 'stripe') AS same_id;
RELEASE SAVEPOINT b;
SAVEPOINT c;
SELECT batch_give_back('savepoint-4') > 0 AS queued;
RELEASE SAVEPOINT c;
SELECT * FROM batch_rows('savepoint-');
ROLLBACK TO SAVEPOINT a;
SELECT batch_give_back('savepoint-5') > 0 AS queued;
COMMIT;
SELECT new_user_id FROM celloattr.attributions WHERE new_user_id LIKE 'savepoint-%' ORDER BY 1;
SELECT * FROM batch_rows('savepoint-');

-- 2,500 rows of one statement; at rows 900 and 1900, while that many of its
-- rows wait in the batch, a block queues 1,500 of its own (the batch fills:
-- three INSERTs inside the block, the first with the statement's rows),
-- reads the table and fails
CREATE FUNCTION batch_outer_row(i int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	attr_id bigint;
BEGIN
	attr_id := celloattr.cello_attribute('pNRB1aYqArN', 'outer-' || i, 'stripe');
	IF i % 1000 = 900 THEN
		BEGIN
			PERFORM count(celloattr.cello_attribute('pNRB1aYqArN', 'inner-' || i || '-' || g, 'stripe'))
			   FROM generate_series(1, 1500) g;
			PERFORM 1 FROM celloattr.attributions WHERE id = attr_id;
			RAISE EXCEPTION 'the block fails';
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
	END IF;
	RETURN attr_id;
END
$$;
INSERT INTO batch_held SELECT 'outer-' || i, batch_outer_row(i) FROM generate_series(1, 2500) i;
SELECT count(*) AS held, count(a.id) AS attributions
  FROM batch_held h LEFT JOIN celloattr.attributions a ON a.id = h.attr_id AND a.new_user_id = h.user_id
 WHERE h.user_id LIKE 'outer-%';
SELECT * FROM batch_rows('outer-');
SELECT * FROM batch_rows('inner-');

-- an exception block in a trigger: the attribute trigger's rows, waiting for
-- the end of the INSERT, are written inside the block, which fails
CREATE TABLE batch_trig (id int PRIMARY KEY, code text);
CREATE FUNCTION batch_trig_block() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	attr_id bigint;
BEGIN
	IF NEW.id % 7 = 0 THEN
		BEGIN
			attr_id := celloattr.cello_attribute('pNRB1aYqArN', 'trig-inner-' || NEW.id, 'stripe');
			PERFORM 1 FROM celloattr.attributions WHERE new_user_id = NEW.id::text;
			IF NOT FOUND THEN
				RAISE EXCEPTION 'attribution of % is not visible in the block', NEW.id
					USING ERRCODE = 'no_data_found';
			END IF;
			RAISE EXCEPTION 'the trigger''s block fails';
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
	END IF;
	RETURN NULL;
END
$$;
-- (row triggers fire in name order: a_ queues, then b_ runs its block)
CREATE TRIGGER a_attribute AFTER INSERT ON batch_trig FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=stripe');
CREATE TRIGGER b_block AFTER INSERT ON batch_trig FOR EACH ROW
	EXECUTE FUNCTION batch_trig_block();
INSERT INTO batch_trig SELECT i, 'pNRB1aYqArN' FROM generate_series(70001, 70300) i;
SELECT * FROM batch_rows('7');
SELECT * FROM batch_rows('trig-inner-');

-- a deferred trigger with such a block runs at COMMIT: the rows it gets back
-- are written by the flush before commit
CREATE TABLE batch_deferred (id int PRIMARY KEY);
CREATE FUNCTION batch_deferred_block() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM batch_give_back('deferred-' || NEW.id);
	RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER batch_deferred AFTER INSERT ON batch_deferred
	DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION batch_deferred_block();
BEGIN;
INSERT INTO batch_deferred SELECT generate_series(1, 3);
SELECT count(*) AS before_commit FROM celloattr.attributions WHERE new_user_id LIKE 'deferred-%';
COMMIT;
SELECT * FROM batch_rows('deferred-');

-- a portal that queues as it is read (a FOR loop fetches ten rows at a
-- time) across blocks that write the batch and fail
DO $$
DECLARE
	r record;
BEGIN
	FOR r IN SELECT i, celloattr.cello_attribute('pNRB1aYqArN', 'portal-' || i, 'stripe') AS id
			   FROM generate_series(1, 25) i LOOP
		BEGIN
			PERFORM 1 FROM celloattr.attributions WHERE id = r.id;
			IF NOT FOUND THEN
				RAISE EXCEPTION 'attribution % is not visible in the block', r.id
					USING ERRCODE = 'no_data_found';
			END IF;
			RAISE EXCEPTION 'the block fails';
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
		INSERT INTO batch_held VALUES ('portal-' || r.i, r.id);
	END LOOP;
END
$$;
SELECT count(*) AS held, count(a.id) AS attributions
  FROM batch_held h LEFT JOIN celloattr.attributions a ON a.id = h.attr_id AND a.new_user_id = h.user_id
 WHERE h.user_id LIKE 'portal-%';
SELECT * FROM batch_rows('portal-');

-- rows queued by functions of two owners wait in one batch: each run of
-- them is inserted as its owner, and both are given back by a failing block
CREATE ROLE batch_owner SUPERUSER;
CREATE TABLE batch_writers (role name);
CREATE FUNCTION batch_record_writer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.batch_writers VALUES (current_user);
	RETURN NULL;
END
$$;
CREATE TRIGGER batch_writer AFTER INSERT ON celloattr.attributions
	FOR EACH STATEMENT EXECUTE FUNCTION public.batch_record_writer();
ALTER FUNCTION celloattr.attribute_trigger() OWNER TO batch_owner;
CREATE TABLE batch_owned (id int PRIMARY KEY, code text);
CREATE TRIGGER a_attribute AFTER INSERT ON batch_owned FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=stripe');
CREATE TRIGGER b_block AFTER INSERT ON batch_owned FOR EACH ROW
	EXECUTE FUNCTION batch_trig_block();
INSERT INTO batch_owned SELECT i, 'pNRB1aYqArN' FROM generate_series(71001, 71020) i
 WHERE celloattr.cello_attribute('pNRB1aYqArN', 'owned-' || i, 'stripe') > 0;
SELECT role = 'batch_owner' AS trigger_owner, count(*) AS inserts FROM batch_writers GROUP BY 1 ORDER BY 1;
SELECT * FROM batch_rows('710');
SELECT * FROM batch_rows('owned-');
DROP TRIGGER batch_writer ON celloattr.attributions;
ALTER FUNCTION celloattr.attribute_trigger() OWNER TO CURRENT_USER;
DROP ROLE batch_owner;
DROP TABLE batch_held, batch_trig, batch_deferred, batch_owned, batch_writers;
DROP FUNCTION batch_rows(text), batch_give_back(text), batch_outer_row(int), batch_trig_block(),
	batch_deferred_block(), batch_record_writer();

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
