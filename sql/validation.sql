--
-- Bad input: each call raises with a proper SQLSTATE, names the bad value,
-- gives a hint, and leaves nothing queued.
--
CREATE EXTENSION celloattr;
\set VERBOSITY default
\set SHOW_CONTEXT never

-- NULL and empty required arguments
SELECT celloattr.cello_attribute(NULL, 'user-1', 'stripe');
SELECT celloattr.cello_attribute('', 'user-1', 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', NULL, 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', '', 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', NULL);

-- the ucc format: 11 letters and digits
SELECT celloattr.cello_attribute('pNRB1aYqAr', 'user-1', 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArNX', 'user-1', 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYq-rN', 'user-1', 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqÄrN', 'user-1', 'stripe');
SELECT celloattr.cello_attribute('cello-ucc', 'user-1', 'stripe');

-- unknown gateway
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'paypal');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'Stripe');

-- lengths over the providers' limits
SELECT celloattr.cello_attribute('pNRB1aYqArN', repeat('u', 501), 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'chargebee', customer_id => repeat('c', 51));
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', email => repeat('e', 510) || '@x.io');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', name => repeat('n', 257));
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', reason => repeat('r', 1001));
-- multi-byte text counts characters, not bytes: 500 emoji fit
SELECT celloattr.cello_attribute('pNRB1aYqArN', repeat('😀', 500), 'stripe', dry_run => true) > 0 AS accepted;
SELECT celloattr.cello_attribute('pNRB1aYqArN', repeat('😀', 501), 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'a' || repeat('é', 500), 'stripe');

-- control characters
SELECT celloattr.cello_attribute('pNRB1aYqArN', E'user\n1', 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', customer_id => E'cus_\x01');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', name => E'Jane\tDoe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', organization_id => E'org\x7f');

-- empty optional values are mistakes too (NULL leaves them out)
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', email => '');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', email => 'not-an-email');
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', email => 'a@b@c');

-- the Cello API path always sends the signup through the API
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'cello_api', signup_via_api => false);

-- a signup in the future
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-1', 'stripe', signed_up_at => now() + interval '2 days');

-- transactions: the invoices of a user without a Cello API attribution are
-- none of celloattr's business, whatever the other arguments hold: NULL,
-- nothing checked, nothing registered (the checks are in transaction.sql)
SELECT celloattr.cello_transaction(NULL, 'in_1', 10, 'EUR', now()) IS NULL AS no_user;
SELECT celloattr.cello_transaction('', 'in_1', 10, 'EUR', now()) IS NULL AS empty_user;
SELECT celloattr.cello_transaction('user-1', NULL, NULL, 'EURO', NULL, 'fortnightly', NULL,
	E'sub\r', -1, 'invoice-refunded') IS NULL AS not_attributed;
SELECT celloattr.cello_transaction(repeat('u', 600), 'in_1', 10, 'EUR', now()) IS NULL AS long_user;

-- SQLSTATEs, for callers that branch on them
\set VERBOSITY sqlstate
SELECT celloattr.cello_attribute(NULL, 'user-1', 'stripe');
SELECT celloattr.cello_attribute('short', 'user-1', 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', repeat('u', 501), 'stripe');
SELECT celloattr.cello_attribute('pNRB1aYqArN', E'a\x02', 'stripe');
\set VERBOSITY default

-- nothing was queued by any of the failed calls (one dry run was accepted)
SELECT count(*) AS attributions, count(*) FILTER (WHERE dry_run) AS dry_runs
  FROM celloattr.attributions;
SELECT count(*) AS jobs FROM celloattr.jobs WHERE attribution_id NOT IN
  (SELECT id FROM celloattr.attributions WHERE dry_run);
SELECT count(*) AS transactions FROM celloattr.transactions;
DELETE FROM celloattr.attributions;
