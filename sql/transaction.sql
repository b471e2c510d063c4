--
-- Transactions for the Cello API path.
--
\set SHOW_CONTEXT never

-- a user without a Cello API attribution: NULL, nothing registered
SELECT celloattr.cello_transaction('nobody', 'in_0', 49, 'EUR', now() - interval '1 day',
	'monthly', 'Team Plan') IS NULL AS not_attributed;
-- a Stripe-path user is not a Cello API one either: its payments replay through Stripe
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-tx-stripe', 'stripe') > 0 AS queued;
SELECT celloattr.cello_transaction('user-tx-stripe', 'in_0', 49, 'EUR', now() - interval '1 day',
	'monthly', 'Team Plan') IS NULL AS not_cello_api;
SELECT count(*) AS registered FROM celloattr.transactions;

SELECT celloattr.cello_attribute('UIPIWa2Hnnr', 'user-tx', 'cello_api',
	email => 'tx@example.com') AS tx_attr \gset

-- an attributed user's transaction is checked: a bad value is an error
-- that names it, and nothing is registered
SELECT celloattr.cello_transaction('user-tx', NULL, 10, 'EUR', now());
SELECT celloattr.cello_transaction('user-tx', 'in_1', NULL, 'EUR', now());
SELECT celloattr.cello_transaction('user-tx', 'in_1', 10, 'EURO', now());
SELECT celloattr.cello_transaction('user-tx', 'in_1', 10, 'EUR', NULL);
SELECT celloattr.cello_transaction('user-tx', 'in_1', 10, 'EUR', now(), 'fortnightly', 'Pro');
SELECT celloattr.cello_transaction('user-tx', 'in_1', 10, 'EUR', now(), 'monthly', 'Pro', trigger => 'invoice-refunded');
SELECT celloattr.cello_transaction('user-tx', 'in_1', 10, 'EUR', now(), 'monthly');
SELECT celloattr.cello_transaction('user-tx', 'in_1', 10, 'EUR', now(), 'monthly', 'Pro', seats => -1);
SELECT celloattr.cello_transaction('user-tx', E'in_\r1', 10, 'EUR', now(), 'monthly', 'Pro');
SELECT celloattr.cello_transaction('user-tx', 'in_1', 10, 'EUR', now() + interval '2 days', 'monthly', 'Pro');
-- an amount Cello cannot take as a JSON number, or no invoice has
SELECT celloattr.cello_transaction('user-tx', 'in_1', 'NaN', 'EUR', now(), 'monthly', 'Pro');
SELECT celloattr.cello_transaction('user-tx', 'in_1', '-Infinity', 'EUR', now(), 'monthly', 'Pro');
SELECT celloattr.cello_transaction('user-tx', 'in_1', 1e15, 'EUR', now(), 'monthly', 'Pro');
SELECT celloattr.cello_transaction('user-tx', 'in_1', -12345678901234567890123, 'EUR', now(), 'monthly', 'Pro');
SELECT count(*) AS registered FROM celloattr.transactions;

-- inside the window: queued after the signup step
SELECT celloattr.cello_transaction('user-tx', 'in_1', 49, 'eur', now() - interval '2 days',
	'monthly', 'Team Plan', 'sub_1', 3) AS tx1 \gset
-- the same invoice twice queues once and returns the same id
SELECT celloattr.cello_transaction('user-tx', 'in_1', 49, 'EUR', now() - interval '2 days',
	'monthly', 'Team Plan', 'sub_1', 3) = :tx1 AS same_id;
-- its refund is another event
SELECT celloattr.cello_transaction('user-tx', 'in_1', 49, 'EUR', now() - interval '1 day',
	'monthly', NULL, 'sub_1', trigger => 'charge-refunded') <> :tx1 AS refund_registered;
-- older than the window: straight to the support report, nothing queued
SELECT celloattr.cello_transaction('user-tx', 'in_old', 29, 'EUR', now() - interval '45 days',
	'one-time', 'Pro License') > 0 AS old_registered;

SELECT t.invoice_id, t.trigger, t.amount, t.currency, t.interval, t.product_key,
	   t.subscription_id, t.seats, j.kind, j.stage, j.state AS job_state,
	   (j.payload->>'transaction_id')::bigint = t.id AND j.payload->>'invoice_id' = t.invoice_id AS payload_ok
  FROM celloattr.transactions t LEFT JOIN celloattr.jobs j ON j.id = t.job_id
 WHERE t.attribution_id = :tx_attr ORDER BY t.id;

-- the step carries the event's fields (the worker's steps read no tables);
-- a refund registered without a product key takes its payment's
SELECT j.payload - 'transaction_id' - 'paid_at' - 'paid_at_epoch' AS payload,
	   j.payload->>'paid_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$' AS paid_at_rfc3339,
	   (j.payload->>'paid_at_epoch')::bigint = floor(extract(epoch FROM t.paid_at)) AS paid_at_epoch_ok
  FROM celloattr.transactions t JOIN celloattr.jobs j ON j.id = t.job_id
 WHERE t.attribution_id = :tx_attr ORDER BY t.id;

SELECT trigger, invoice_id, price, currency, "interval", product_key, reason
  FROM celloattr.support_report(:tx_attr);

-- the window is a superuser's setting (postgresql.conf, ALTER SYSTEM or
-- ALTER DATABASE, then reload): an application role cannot widen it
SHOW celloattr.transaction_window;
SET ROLE celloattr_app;
SET celloattr.transaction_window = '50d';
RESET ROLE;
