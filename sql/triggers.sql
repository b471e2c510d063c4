--
-- Triggers on the product's own tables: a users table whose referral code
-- is set or corrected, and an invoices table whose rows become paid or
-- refunded.  The worker is paused here, so every repair stays queued.
--
\set SHOW_CONTEXT never

CREATE TABLE users (
	id bigint PRIMARY KEY,
	referral_code text,
	email text,
	stripe_customer_id text,
	gateway text
);
CREATE TABLE invoices (
	id text PRIMARY KEY,
	user_id bigint,
	amount_cents bigint,
	currency text,
	paid_at timestamptz,
	status text,
	plan text
);

CREATE TRIGGER users_attribute
	AFTER INSERT OR UPDATE ON users
	FOR EACH ROW EXECUTE FUNCTION celloattr.attribute_trigger(
		'ucc=referral_code', 'new_user_id=id', 'gateway=gateway',
		'customer_id=stripe_customer_id', 'email=email');

-- a user with a code: one attribution, with the columns the trigger names
INSERT INTO users VALUES (7001, 'pNRB1aYqArN', 'ann@example.com', 'cus_ann', 'stripe');
SELECT ucc, new_user_id, gateway, customer_id, email, force, reason, state
  FROM celloattr.attributions WHERE new_user_id = '7001';

-- a user without a code (NULL or empty) queues nothing
INSERT INTO users VALUES (7002, NULL, 'bob@example.com', NULL, 'stripe'),
						 (7003, '', '', '', 'stripe');
SELECT count(*) AS queued FROM celloattr.attributions WHERE new_user_id IN ('7002', '7003');

-- an UPDATE that sets the code queues; '' in optional columns means none
UPDATE users SET referral_code = 'UPobYBDuu0N' WHERE id = 7003;
SELECT ucc, new_user_id, gateway, customer_id, email, force, state
  FROM celloattr.attributions WHERE new_user_id = '7003';

-- an UPDATE of another column queues nothing new
UPDATE users SET email = 'ann@example.org' WHERE id = 7001;
UPDATE users SET referral_code = referral_code WHERE id = 7001;
SELECT count(*) AS attributions FROM celloattr.attributions WHERE new_user_id = '7001';

-- correcting the code supersedes the old repair, forced, with the reason
UPDATE users SET referral_code = 'UIPIWa2Hnnr' WHERE id = 7001;
SELECT ucc, superseded_by IS NOT NULL AS superseded, force, reason
  FROM celloattr.attributions WHERE new_user_id = '7001' ORDER BY id;

-- removing the code attributes nothing (and undoes nothing)
UPDATE users SET referral_code = NULL WHERE id = 7003;
SELECT count(*) AS attributions FROM celloattr.attributions WHERE new_user_id = '7003';

-- a bad code is an error by default, and the insert fails with it
INSERT INTO users VALUES (7004, 'not-a-code', NULL, NULL, 'stripe');
SELECT count(*) AS users FROM users WHERE id = 7004;
-- so is a user whose gateway column holds no gateway
INSERT INTO users VALUES (7004, 'pNRB1aYqArN', NULL, NULL, 'paypal');

-- columns of any type are read as text (a uuid id, an integer organization);
-- a constant gateway, and a boolean column for signup_via_api
CREATE TABLE accounts (
	account_id uuid PRIMARY KEY,
	code text,
	api_signup boolean,
	org integer
);
CREATE TRIGGER accounts_attribute
	AFTER INSERT OR UPDATE ON accounts
	FOR EACH ROW EXECUTE FUNCTION celloattr.attribute_trigger(
		'ucc=code', 'new_user_id=account_id', 'gateway=chargebee',
		'signup_via_api=api_signup', 'organization_id=org');
INSERT INTO accounts VALUES ('6f1c1f5e-2b5a-4c7e-9d3a-2f0c6b1e8a01', 'pNRB1aYqArN', true, 42),
							('6f1c1f5e-2b5a-4c7e-9d3a-2f0c6b1e8a02', 'UPobYBDuu0N', NULL, NULL);
SELECT ucc, new_user_id, gateway, signup_via_api, organization_id, state
  FROM celloattr.attributions WHERE new_user_id LIKE '6f1c1f5e-%' ORDER BY new_user_id;

-- a column named like a gateway wins over the constant
CREATE TABLE members (id integer PRIMARY KEY, ucc text, stripe text);
CREATE TRIGGER members_attribute
	AFTER INSERT ON members
	FOR EACH ROW EXECUTE FUNCTION celloattr.attribute_trigger(
		'ucc=ucc', 'new_user_id=id', 'gateway=stripe', 'signup_via_api=true');
INSERT INTO members VALUES (7101, 'pNRB1aYqArN', 'chargebee');
SELECT ucc, new_user_id, gateway, signup_via_api
  FROM celloattr.attributions WHERE new_user_id = '7101';

-- invalid=warn: a bad code becomes a WARNING, the row is kept, nothing queued
CREATE TABLE signups (id integer PRIMARY KEY, code text);
CREATE TRIGGER signups_attribute
	AFTER INSERT OR UPDATE ON signups
	FOR EACH ROW EXECUTE FUNCTION celloattr.attribute_trigger(
		'ucc=code', 'new_user_id=id', 'gateway=cello_api', 'invalid=warn');
INSERT INTO signups VALUES (7201, 'typo!'), (7202, 'UIPIWa2Hnnr');
SELECT id, code FROM signups ORDER BY id;
SELECT ucc, new_user_id, gateway, signup_via_api
  FROM celloattr.attributions WHERE new_user_id IN ('7201', '7202') ORDER BY new_user_id;
-- a conflict is not a bad value: it stays an error even with invalid=warn
-- (only the SQLSTATE is shown: the message names the attribution's id)
UPDATE signups SET code = NULL WHERE id = 7202;
\set VERBOSITY sqlstate
UPDATE signups SET code = 'pNRB1aYqArN' WHERE id = 7202;
\set VERBOSITY default
SELECT code FROM signups WHERE id = 7202;

-- bad trigger arguments are found when the trigger first fires
CREATE TABLE t (id integer, code text, flag text, at timestamptz);
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=referral_code', 'new_user_id=id', 'gateway=stripe');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=stripe', 'colour=blue');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=stripe', 'ucc=flag');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc', 'new_user_id=id', 'gateway=stripe');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=paypal');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=stripe', 'signup_via_api=flag');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=stripe', 'invalid=ignore');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.transaction_trigger('new_user_id=id', 'invoice_id=id',
		'amount=id', 'currency=EUR', 'paid_at=at');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.transaction_trigger('new_user_id=id', 'invoice_id=id',
		'amount=id', 'currency=''EUR', 'paid_at=at');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.transaction_trigger('new_user_id=id', 'invoice_id=id',
		'amount=id', 'currency=''EUR''', 'paid_at=at', 'amount_divisor=0');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.transaction_trigger('new_user_id=id', 'invoice_id=id',
		'amount=id', 'currency=''EUR''', 'paid_at=at', 'status=flag', 'trigger=charge-refunded');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;

-- the triggers run only AFTER INSERT OR UPDATE FOR EACH ROW
CREATE TRIGGER bad AFTER INSERT ON t FOR EACH STATEMENT
	EXECUTE FUNCTION celloattr.attribute_trigger('ucc=code', 'new_user_id=id', 'gateway=stripe');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
CREATE TRIGGER bad BEFORE INSERT ON t FOR EACH ROW
	EXECUTE FUNCTION celloattr.transaction_trigger('new_user_id=id', 'invoice_id=id',
		'amount=id', 'currency=''EUR''', 'paid_at=at');
INSERT INTO t VALUES (1, 'pNRB1aYqArN');
DROP TRIGGER bad ON t;
SELECT count(*) AS rows_kept FROM t;
SELECT count(*) AS queued FROM celloattr.attributions WHERE new_user_id = '1';

-- invoices of a Cello API user: amounts in cents, the status decides the event
INSERT INTO users VALUES (7301, 'UIPIWa2Hnnr', 'cy@example.com', NULL, 'cello_api');
SELECT ucc, new_user_id, gateway, signup_via_api, state
  FROM celloattr.attributions WHERE new_user_id = '7301';

CREATE TRIGGER invoices_transaction
	AFTER INSERT OR UPDATE ON invoices
	FOR EACH ROW EXECUTE FUNCTION celloattr.transaction_trigger(
		'new_user_id=user_id', 'invoice_id=id', 'amount=amount_cents',
		'amount_divisor=100', 'currency=currency', 'paid_at=paid_at',
		'status=status', 'product_key=plan', 'interval=monthly');

INSERT INTO invoices VALUES
	('in_t1', 7301, 4900, 'EUR', now() - interval '1 day', 'paid', 'Team Plan'),
	('in_t2', 7301, 1999, 'EUR', now() - interval '2 days', 'open', 'Team Plan'),
	('in_t3', 7301, 4900, 'EUR', now() - interval '45 days', 'paid', 'Team Plan'),
	('in_t4', 7002, 4900, 'EUR', now() - interval '1 day', 'paid', 'Team Plan'),
	('in_t5', NULL, 4900, 'EUR', now() - interval '1 day', 'paid', 'Team Plan');
-- an open invoice that becomes paid, and a paid one that is refunded
UPDATE invoices SET status = 'paid' WHERE id = 'in_t2';
UPDATE invoices SET status = 'refunded' WHERE id = 'in_t1';
-- other updates are no events
UPDATE invoices SET plan = 'Team Plan' WHERE user_id = 7301;

SELECT new_user_id, invoice_id, trigger, amount, currency, interval, product_key,
	   paid_at < now() - interval '30 days' AS too_old
  FROM celloattr.transactions WHERE new_user_id IN ('7301', '7002')
 ORDER BY invoice_id, trigger;

-- the old invoice goes to the support report instead of the API
SELECT ucc, new_user_id, invoice_id, trigger, price, currency, interval, product_key
  FROM celloattr.support_report()
 WHERE new_user_id = '7301';

-- constants for currency and product, a trigger column, seats
CREATE TABLE payments (
	ref text, customer bigint, total numeric, at timestamp, kind text, seats smallint
);
CREATE TRIGGER payments_transaction
	AFTER INSERT OR UPDATE ON payments
	FOR EACH ROW EXECUTE FUNCTION celloattr.transaction_trigger(
		'new_user_id=customer', 'invoice_id=ref', 'amount=total', 'currency=''USD''',
		'paid_at=at', 'product_key=''Pro Plan''', 'trigger=kind', 'seats=seats');
INSERT INTO payments VALUES ('py_1', 7301, 12.50, now() - interval '3 days', NULL, 5);
UPDATE payments SET kind = 'charge-refunded' WHERE ref = 'py_1';
-- a bad value in a row is an error
INSERT INTO payments VALUES ('py_2', 7301, 12.50, now() - interval '3 days', 'chargeback', NULL);
SELECT invoice_id, trigger, amount, currency, interval, product_key, seats
  FROM celloattr.transactions WHERE invoice_id LIKE 'py_%' ORDER BY invoice_id, trigger;

--
-- The application's own writes: a row celloattr does not need never fails.
--
-- An invoices table as products have it, where the trigger is put on every
-- row; product and amount may be missing on rows of users nobody referred.
CREATE TABLE bills (
	id text PRIMARY KEY, user_id text, amount text, currency text, paid_at text,
	status text, plan text, seats text, note text
);
CREATE TRIGGER bills_transaction
	AFTER INSERT OR UPDATE ON bills
	FOR EACH ROW EXECUTE FUNCTION celloattr.transaction_trigger(
		'new_user_id=user_id', 'invoice_id=id', 'amount=amount', 'currency=currency',
		'paid_at=paid_at', 'status=status', 'product_key=plan', 'seats=seats');
-- users nobody referred: whatever the row holds, it is written and nothing queued
INSERT INTO bills VALUES
	('b1', 'stranger', '49', 'EUR', now()::text, 'paid', NULL, NULL, 'no product'),
	('b2', 'stranger', NULL, NULL, NULL, 'paid', NULL, NULL, 'nothing at all'),
	('b3', 'stranger', 'n/a', 'euros', 'yesterday-ish', 'paid', 'Pro', '3.5', 'garbage'),
	('b4', NULL, NULL, NULL, NULL, 'paid', NULL, NULL, 'no user'),
	('b5', '', '10', 'EUR', now()::text, 'paid', 'Pro', NULL, 'empty user'),
	('b6', 'stranger', '10', 'EUR', (now() + interval '3 days')::text, 'refunded', NULL, '-1', 'future refund');
-- an attributed user's rows that are no event: NULL or other status, NULL amount
INSERT INTO bills VALUES
	('b7', '7301', NULL, NULL, NULL, NULL, NULL, NULL, 'NULL status'),
	('b8', '7301', NULL, NULL, NULL, 'draft', NULL, NULL, 'other status'),
	('b9', '7301', 'n/a', 'x', 'never', 'void', NULL, NULL, 'void, unreadable values');
-- updates that do not change the status are no events, whatever else they change
UPDATE bills SET note = 'touched', amount = 'still n/a' WHERE id IN ('b7', 'b8', 'b9');
UPDATE bills SET status = 'paid' WHERE id = 'b1';
SELECT count(*) AS bills_written FROM bills;
SELECT count(*) AS registered FROM celloattr.transactions WHERE invoice_id LIKE 'b_';

-- an attributed user's paid row with a value missing is an error by default...
INSERT INTO bills VALUES ('b10', '7301', '49', 'EUR', now()::text, 'paid', NULL, NULL, 'no product');
UPDATE bills SET status = 'paid', amount = 'n/a' WHERE id = 'b9';
-- ...and with invalid=warn a WARNING: the row is written, the transaction
-- goes to the support report with the reason, and nothing goes to Cello
DROP TRIGGER bills_transaction ON bills;
CREATE TRIGGER bills_transaction
	AFTER INSERT OR UPDATE ON bills
	FOR EACH ROW EXECUTE FUNCTION celloattr.transaction_trigger(
		'new_user_id=user_id', 'invoice_id=id', 'amount=amount', 'currency=currency',
		'paid_at=paid_at', 'status=status', 'product_key=plan', 'seats=seats',
		'invalid=warn');
INSERT INTO bills VALUES ('b10', '7301', '49', 'EUR', (now() - interval '1 day')::text, 'paid', NULL, NULL, 'no product');
INSERT INTO bills VALUES ('b11', '7301', '49', 'EURO', (now() - interval '1 day')::text, 'paid', 'Pro', NULL, 'bad currency');
UPDATE bills SET status = 'paid', amount = 'n/a' WHERE id = 'b9';
INSERT INTO bills VALUES ('b12', '7301', '49', 'EUR', 'someday', 'paid', 'Pro', NULL, 'unreadable date');
-- the same row again reports once
UPDATE bills SET status = 'open' WHERE id = 'b10';
UPDATE bills SET status = 'paid' WHERE id = 'b10';
-- a good row of the same user goes through as before
INSERT INTO bills VALUES ('b13', '7301', '19.99', 'EUR', (now() - interval '1 day')::text, 'paid', 'Pro', '2', 'good');
SELECT id, note FROM bills WHERE id IN ('b9', 'b10', 'b11', 'b12', 'b13') ORDER BY id;
SELECT invoice_id, trigger, amount, seats FROM celloattr.transactions WHERE invoice_id LIKE 'b_%';
SELECT invoice_id, trigger, price, currency, product_key, event_timestamp IS NOT NULL AS has_time, reason
  FROM celloattr.support_report()
 WHERE new_user_id = '7301' AND invoice_id LIKE 'b_%' ORDER BY invoice_id;
-- rows without an invoice id each reach the report: none stands for another
CREATE TABLE loose_bills AS SELECT * FROM bills WHERE false;
CREATE TRIGGER loose_bills_transaction
	AFTER INSERT ON loose_bills
	FOR EACH ROW EXECUTE FUNCTION celloattr.transaction_trigger(
		'new_user_id=user_id', 'invoice_id=id', 'amount=amount', 'currency=currency',
		'paid_at=paid_at', 'status=status', 'product_key=plan', 'invalid=warn');
INSERT INTO loose_bills VALUES (NULL, '7301', '49', 'EUR', (now() - interval '1 day')::text, 'paid', 'Pro', NULL, 'no id'),
	(NULL, '7301', '59', 'EUR', (now() - interval '2 days')::text, 'paid', 'Pro', NULL, 'no id either');
SELECT price, reason FROM celloattr.support_report()
 WHERE new_user_id = '7301' AND invoice_id IS NULL ORDER BY price;
DROP TABLE loose_bills;
-- a user deleted since: their attribution stays, and so do their invoices' events
DELETE FROM users WHERE id = 7301;
UPDATE bills SET status = 'refunded' WHERE id = 'b13';
SELECT invoice_id, trigger FROM celloattr.transactions WHERE invoice_id = 'b13' ORDER BY trigger;
-- a cancelled repair is nobody's business any more: rows of that user are written, unchecked
SELECT celloattr.cancel(id) >= 0 AS cancelled FROM celloattr.attributions WHERE new_user_id = '7301';
INSERT INTO bills VALUES ('b14', '7301', NULL, NULL, NULL, 'paid', NULL, NULL, 'after cancel');
SELECT count(*) AS registered_after_cancel FROM celloattr.transactions WHERE invoice_id = 'b14';

-- a user re-created with the same id and another code is a dispute: an
-- error, even with invalid=warn (only the SQLSTATE: the message names ids)
INSERT INTO users VALUES (7401, 'pNRB1aYqArN', 'dee@example.com', 'cus_dee', 'stripe');
DELETE FROM users WHERE id = 7401;
\set VERBOSITY sqlstate
INSERT INTO users VALUES (7401, 'UIPIWa2Hnnr', 'dee@example.com', 'cus_dee', 'stripe');
\set VERBOSITY default
CREATE TABLE members2 (id bigint PRIMARY KEY, code text);
CREATE TRIGGER members2_attribute AFTER INSERT OR UPDATE ON members2
	FOR EACH ROW EXECUTE FUNCTION celloattr.attribute_trigger(
		'ucc=code', 'new_user_id=id', 'gateway=stripe', 'invalid=warn');
-- a bad code in a bulk insert warns for its row, the others are queued
INSERT INTO members2 VALUES (7402, 'bad code'), (7403, 'pNRB1aYqArN');
SELECT id, code FROM members2 ORDER BY id;
SELECT new_user_id, ucc FROM celloattr.attributions WHERE new_user_id IN ('7402', '7403')
 ORDER BY new_user_id;
-- a user row without a code, or an update that leaves the code alone
INSERT INTO members2 VALUES (7404, NULL);
UPDATE members2 SET code = code WHERE id = 7403;
SELECT count(*) AS attributions_7403 FROM celloattr.attributions WHERE new_user_id = '7403';

-- SQL objects of a version this library does not know (a library rolled
-- back): rows celloattr has no business with are still written, the
-- others fail with an error that names both versions
BEGIN;
UPDATE pg_extension SET extversion = '9.9' WHERE extname = 'celloattr';
INSERT INTO members2 VALUES (7405, NULL);
UPDATE members2 SET code = code WHERE id = 7403;
INSERT INTO bills VALUES
	('b15', '7301', NULL, NULL, NULL, 'draft', NULL, NULL, 'no event'),
	('b16', NULL, NULL, NULL, NULL, 'paid', NULL, NULL, 'no user');
SELECT count(*) AS written_on_unknown_version FROM bills WHERE id IN ('b15', 'b16');
INSERT INTO members2 VALUES (7406, 'pNRB1aYqArN');
ROLLBACK;

DROP TABLE bills, members2;
DROP TABLE users, invoices, accounts, members, signups, t, payments;
