# t/010_retention.pl: the worker deletes HTTP log rows and finished steps
# older than celloattr.retention, in batches of celloattr.retention_batch,
# and nothing else.
#
# The rows are written directly, in one transaction, with finish times two
# days ("old") or an hour ("young") ago, and retention one day.  Steps that
# are done go once old; failed, cancelled and planned steps only with a
# repair that is over for good (superseded, cancelled, a finished dry run);
# unfinished steps, young rows, the steps a failed repair needs for
# retry(), the attributions, transactions and support items all stay.
# With retention 0 nothing goes.  The batches are read from the worker's
# DEBUG1 lines.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('retention', <<CONF);
celloattr.paused = on
celloattr.retention = 0
celloattr.retention_batch = 10
log_min_messages = debug1
CONF
my $db = $CelloattrTest::DB;

$node->safe_psql($db, <<'SQL');
BEGIN;
CREATE TEMP TABLE fixture (id bigint, user_id text, state text, age interval,
                           superseded_by bigint, dry_run boolean DEFAULT false);
INSERT INTO fixture (id, user_id, state, age, superseded_by, dry_run) VALUES
  (1, 'u1', 'done', '2 days', NULL, false), (2, 'u2', 'done', '2 days', NULL, false),
  (3, 'u3', 'done', '2 days', NULL, false), (4, 'u4', 'done', '2 days', NULL, false),
  (5, 'u5', 'done', '2 days', NULL, false), (6, 'u6', 'done', '2 days', NULL, false),
  (7, 'u7', 'done', '2 days', NULL, false),
  (8, 'u8', 'done', '1 hour', NULL, false),           -- young
  (9, 'u9', 'needs_support', '2 days', NULL, false),
  (10, 'u10', 'failed', '2 days', NULL, false),       -- retry() may still need it
  (11, 'u11', 'failed', '2 days', 12, false),         -- superseded by 12
  (12, 'u11', 'queued', NULL, NULL, false),
  (13, 'u13', 'cancelled', '2 days', NULL, false),
  (14, 'u14', 'cancelled', '1 hour', NULL, false),    -- young
  (15, 'u15', 'running', NULL, NULL, false),          -- reopened by a new transaction
  (16, 'u16', 'planned', '2 days', NULL, true);       -- a dry run
INSERT INTO celloattr.attributions (id, ucc, new_user_id, gateway, signup_via_api,
    requested_by, dry_run, state, requested_at, finished_at, superseded_by)
SELECT id, 'pNRB1aYqArN', user_id, CASE WHEN id = 15 THEN 'cello_api' ELSE 'stripe' END,
       id = 15, 'tap', dry_run, state, now() - interval '3 days', now() - age, superseded_by
  FROM fixture;

INSERT INTO celloattr.jobs (attribution_id, kind, stage, state, idempotency_key,
                            created_at, next_attempt_at, finished_at, lease_until)
SELECT a, kind, stage, state, 'k-' || a || '-' || kind,
       now() - interval '3 days', now() - interval '3 days',
       CASE WHEN state IN ('done', 'support', 'failed', 'cancelled') THEN now() - age END,
       CASE WHEN state = 'running' THEN now() + interval '5 min' END
  FROM (VALUES
    -- 1-7: three done steps each
    (1, 'stripe_customer', 1, 'done', interval '2 days'), (1, 'stripe_payments', 2, 'done', '2 days'),
    (1, 'stripe_resend', 3, 'done', '2 days'),
    (2, 'stripe_customer', 1, 'done', '2 days'), (2, 'stripe_payments', 2, 'done', '2 days'),
    (2, 'stripe_resend', 3, 'done', '2 days'),
    (3, 'stripe_customer', 1, 'done', '2 days'), (3, 'stripe_payments', 2, 'done', '2 days'),
    (3, 'stripe_resend', 3, 'done', '2 days'),
    (4, 'stripe_customer', 1, 'done', '2 days'), (4, 'stripe_payments', 2, 'done', '2 days'),
    (4, 'stripe_resend', 3, 'done', '2 days'),
    (5, 'stripe_customer', 1, 'done', '2 days'), (5, 'stripe_payments', 2, 'done', '2 days'),
    (5, 'stripe_resend', 3, 'done', '2 days'),
    (6, 'stripe_customer', 1, 'done', '2 days'), (6, 'stripe_payments', 2, 'done', '2 days'),
    (6, 'stripe_resend', 3, 'done', '2 days'),
    (7, 'stripe_customer', 1, 'done', '2 days'), (7, 'stripe_payments', 2, 'done', '2 days'),
    (7, 'stripe_resend', 3, 'done', '2 days'),
    (8, 'stripe_customer', 1, 'done', '1 hour'), (8, 'stripe_payments', 2, 'done', '1 hour'),
    (9, 'stripe_customer', 1, 'done', '2 days'), (9, 'stripe_payments', 2, 'support', '2 days'),
    (10, 'stripe_customer', 1, 'done', '2 days'), (10, 'stripe_payments', 2, 'failed', '2 days'),
    (11, 'stripe_customer', 1, 'failed', '2 days'),
    (12, 'stripe_customer', 1, 'queued', NULL),
    (13, 'stripe_customer', 1, 'cancelled', '2 days'), (13, 'stripe_payments', 2, 'cancelled', '2 days'),
    (14, 'stripe_customer', 1, 'cancelled', '1 hour'), (14, 'stripe_payments', 2, 'cancelled', '1 hour'),
    (15, 'cello_signup', 1, 'done', '2 days'), (15, 'cello_transaction-1', 2, 'running', NULL),
    (15, 'cello_transaction-2', 2, 'waiting', NULL),
    (16, 'stripe_customer', 1, 'done', '2 days'), (16, 'stripe_payments', 2, 'planned', NULL)
  ) AS j(a, kind, stage, state, age);

INSERT INTO celloattr.support_items (attribution_id, trigger, invoice_id, reason)
VALUES (9, 'invoice-paid', 'in_old', 'older than the window');
INSERT INTO celloattr.transactions (attribution_id, new_user_id, invoice_id, trigger,
    amount, currency, paid_at, interval)
VALUES (15, 'u15', 'in_1', 'invoice-paid', 49, 'EUR', now() - interval '40 days', 'monthly');

INSERT INTO celloattr.http_log (attribution_id, provider, method, url, started_at)
SELECT 1 + i % 7, 'stripe', 'GET', '/v1/customers/cus_' || i,
       CASE WHEN i <= 25 THEN now() - interval '2 days' ELSE now() - interval '1 hour' END
  FROM generate_series(1, 28) i;
COMMIT;
SQL

my $all = $node->safe_psql($db,
	'SELECT (SELECT count(*) FROM celloattr.jobs) || \' \' || (SELECT count(*) FROM celloattr.http_log)');
is($all, '38 28', 'fixture: 38 steps, 28 HTTP log rows');

# celloattr.retention = 0: the worker goes round its loop (and past its
# pruning) several times, and deletes nothing
my $committed = $node->safe_psql($db, 'SELECT now()');
$node->poll_query_until($db, qq{
	SELECT state_change > '$committed'::timestamptz + 5 * current_setting('celloattr.poll_interval')::interval
	  FROM pg_stat_activity WHERE backend_type = 'celloattr worker'})
  or die 'the worker did not go round its loop';
is($node->safe_psql($db,
	'SELECT (SELECT count(*) FROM celloattr.jobs) || \' \' || (SELECT count(*) FROM celloattr.http_log)'),
	$all, 'retention 0 keeps everything');

my $report = $node->safe_psql($db, 'SELECT * FROM celloattr.support_report()');
my $log_offset = -s $node->logfile;

# one day: the old rows go
$node->safe_psql($db, "ALTER SYSTEM SET celloattr.retention = '1d'");
$node->reload;
$node->poll_query_until($db, q{
	SELECT (SELECT count(*) FROM celloattr.jobs) = 8 AND (SELECT count(*) FROM celloattr.http_log) = 3})
  or die 'the old rows were not deleted';
# the last batch's line follows its commit
$node->wait_for_log(qr/deleted 5 HTTP log rows/, $log_offset);

is($node->safe_psql($db, q{
	SELECT string_agg(attribution_id || ' ' || kind || ' ' || state, E'\n' ORDER BY attribution_id, kind)
	  FROM celloattr.jobs}),
	join("\n",
		'8 stripe_customer done', '8 stripe_payments done',
		'10 stripe_payments failed',
		'12 stripe_customer queued',
		'14 stripe_customer cancelled', '14 stripe_payments cancelled',
		'15 cello_transaction-1 running', '15 cello_transaction-2 waiting'),
	'kept: young steps, unfinished steps, the failed step of a live repair');
is($node->safe_psql($db,
	q{SELECT count(*) FROM celloattr.http_log WHERE started_at > now() - interval '1 day'}),
	'3', 'kept: the young HTTP log rows');
is($node->safe_psql($db, 'SELECT count(*) FROM celloattr.attributions'),
	'16', 'kept: every attribution');
is($node->safe_psql($db, 'SELECT count(*) FROM celloattr.transactions'),
	'1', 'kept: the registered transaction');
is($node->safe_psql($db, 'SELECT * FROM celloattr.support_report()'),
	$report, 'kept: the support report, unchanged');
isnt($report, '', 'the support report has the needs_support repair');
is($node->safe_psql($db, 'SELECT celloattr.retry(10)'),
	'1', 'retry() of the failed repair still finds its failed step');

# the batches, as the worker logged them
my $log = slurp_file($node->logfile, $log_offset);
my %batches;
push @{ $batches{$2} }, $1
  while $log =~ /celloattr worker: deleted (\d+) (.+?), older than celloattr.retention \(1440 min\)/g;
is(join(',', @{ $batches{'HTTP log rows'} // [] }), '10,10,5',
	'25 HTTP log rows in batches of at most 10');
is(join(',', @{ $batches{'done steps'} // [] }), '10,10,6',
	'26 done steps in batches of at most 10');
is(join(',', @{ $batches{'steps of repairs that are over'} // [] }), '4',
	'4 failed, cancelled or planned steps of repairs that are over');

# an idle worker that is not paused prunes too
$node->safe_psql($db, q{
	TRUNCATE celloattr.attributions, celloattr.http_log CASCADE;
	INSERT INTO celloattr.http_log (provider, method, url, started_at)
	SELECT 'stripe', 'GET', '/v1/customers/cus_' || i, now() - interval '2 days'
	  FROM generate_series(1, 15) i;
	ALTER SYSTEM SET celloattr.paused = off;
	SELECT pg_reload_conf();
});
ok($node->poll_query_until($db, 'SELECT count(*) = 0 FROM celloattr.http_log'),
	'an idle worker prunes too');

$node->stop;
done_testing();
