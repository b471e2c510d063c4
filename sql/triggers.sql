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

DROP TABLE users, invoices, accounts, members, signups, t, payments;
