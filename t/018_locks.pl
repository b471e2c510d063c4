# t/018_locks.pl: the worker never waits on a lock an application holds.
#
# Under a lock_timeout the database's owner planted, applications hold
# rows the worker needs: the careful path of cello_attribute() and
# cello_transaction() in an open transaction (an attribution's row, FOR
# UPDATE), a DBA's FOR SHARE on steps, and a pattern that locks an
# attribution and then its steps while the worker works on them.  The
# worker serves everything else meanwhile, keeps an outcome it cannot
# record in memory until the row is let go (a Cello event is sent once),
# never deadlocks, and leaves within its grace period on SIGTERM while a
# row it needs is held.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $node = celloattr_node('locks', "celloattr.max_attempts = 3\n");
my $db = $CelloattrTest::DB;
$node->safe_psql('postgres', "ALTER DATABASE $db SET lock_timeout = '500ms'");
my $old = worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old)");
my $pid = wait_for_new_worker($node, $old);

my $seed = guest_seed();
my $stripe = stripe_seed('k', 12);
$seed->{stripe}{$_} = $stripe->{stripe}{$_} for keys %{ $stripe->{stripe} };
fake_reset();
fake_seed($seed);

sub attribute_k
{
	my ($i) = @_;
	return $node->safe_psql($db, qq{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-k$i',
		'stripe', customer_id => 'cus_k$i')});
}

# Wait until the fake has seen a request of the provider to a path matching $re.
sub wait_fake_request
{
	my ($provider, $method, $re) = @_;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		return 1 if grep { $_->{method} eq $method && $_->{path} =~ $re } @{ fake_requests($provider) };
		sleep 0.1;
	}
	die "no $method $re at the fake";
}

sub done_within
{
	my ($id, $seconds) = @_;
	return $node->safe_psql($db, "SELECT celloattr.wait($id, '$seconds s')");
}

# 1. the careful path holds an attribution while its step's answer comes
# back: the outcome waits in memory, other repairs go through
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/customers/cus_k1$',
	action => 'stall', seconds => 1.5 });
my $k1 = attribute_k(1);
wait_fake_request('stripe', 'POST', qr{^/v1/customers/cus_k1$});
my $app = $node->background_psql($db);
$app->query_safe(q{BEGIN; SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-k1', 'stripe', customer_id => 'cus_k1')});
my $t0 = time;
my $k2 = attribute_k(2);
is(done_within($k2, 20), 'done', 'careful path holding a row: another repair done meanwhile');
cmp_ok(time - $t0, '<', 10, 'careful path holding a row: without waiting for it');
sleep 2;	# the held repair's answer is in
is($node->safe_psql($db, "SELECT state FROM celloattr.jobs WHERE attribution_id = $k1 AND kind = 'stripe_customer'"),
	'running', 'careful path holding a row: its outcome waits');
$app->query_safe('COMMIT');
is(done_within($k1, 20), 'done', 'careful path holding a row: recorded once let go');

# 2. a Cello event answered while cello_transaction()'s careful path holds
# its attribution: recorded later, sent once
my $api = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-lk', 'cello_api',
	email => 'lk@example.com')});
is(done_within($api, 20), 'done', 'Cello API user signed up');
fake_fault({ provider => 'cello', method => 'POST', path_regex => '^/events', action => 'stall', seconds => 1.5 });
$node->safe_psql($db, q{SELECT celloattr.cello_transaction('user-lk', 'inv-lk1', 10, 'EUR',
	pg_catalog.now() - interval '1 day', 'monthly', 'Team')});
$node->poll_query_until($db, "SELECT count(*) > 0 FROM celloattr.jobs WHERE attribution_id = $api AND kind = 'cello_transaction' AND state = 'running'")
  or die 'the event never went';
$app->query_safe(q{BEGIN; SELECT celloattr.cello_transaction('user-lk', 'inv-lk2', 20, 'EUR',
	pg_catalog.now() - interval '1 day', 'monthly', 'Team')});
my $k3 = attribute_k(3);
is(done_within($k3, 20), 'done', 'cello_transaction() holding a row: another repair done meanwhile');
sleep 2;
$app->query_safe('COMMIT');
is(done_within($api, 20), 'done', 'cello_transaction() holding a row: both events recorded');
is(cello_events()->{'invoice-paid user-lk inv-lk1'}, 1, 'cello_transaction() holding a row: the event in flight sent once');
is(cello_events()->{'invoice-paid user-lk inv-lk2'}, 1, 'cello_transaction() holding a row: the new one sent once');

# 3. a DBA holds queued steps FOR SHARE: the claim skips them
$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on; SELECT pg_reload_conf()');
sleep 0.5;
my $k4 = attribute_k(4);
$app->query_safe("BEGIN; SELECT id FROM celloattr.jobs WHERE attribution_id = $k4 FOR SHARE");
$node->safe_psql('postgres', 'ALTER SYSTEM RESET celloattr.paused; SELECT pg_reload_conf()');
my $k5 = attribute_k(5);
is(done_within($k5, 20), 'done', 'steps held FOR SHARE: another repair done meanwhile');
is($node->safe_psql($db, "SELECT state FROM celloattr.attributions WHERE id = $k4"), 'queued',
	'steps held FOR SHARE: not claimed');
$app->query_safe('COMMIT');
is(done_within($k4, 20), 'done', 'steps held FOR SHARE: done once let go');

# 4. the deadlock pattern: an application locks attributions and then
# their steps, in descending id order, while the worker claims and records
# them; neither side fails
$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on; SELECT pg_reload_conf()');
sleep 0.5;
my @ids = map { attribute_k($_) } 6 .. 11;
my $list = join ',', @ids;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET celloattr.paused; SELECT pg_reload_conf()');
my ($rc, $timed_out, $err);
for my $round (1 .. 5)
{
	($rc, $timed_out, $err) = psql_within($node, $db, qq{
		BEGIN;
		SELECT id FROM celloattr.attributions WHERE id IN ($list) ORDER BY id DESC FOR UPDATE;
		SELECT pg_sleep(0.2);
		UPDATE celloattr.jobs SET last_error = last_error WHERE attribution_id IN ($list);
		COMMIT;}, 30);
	last if $rc || $timed_out;
}
ok(!$rc && !$timed_out, "an application locking attributions then steps: never failed ($err)");
ok(wait_all_final($node, 60), 'the deadlock pattern: every repair ended');
unlike(slurp_file($node->logfile), qr/deadlock detected/, 'no deadlock detected');
check_stripe_effects($node, 'k', 11);

# 5. SIGTERM while an outcome waits for a held row: the worker leaves
# within its grace period
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/customers/cus_k12$',
	action => 'stall', seconds => 1 });
my $k12 = attribute_k(12);
wait_fake_request('stripe', 'POST', qr{^/v1/customers/cus_k12$});
$app->query_safe(q{BEGIN; SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-k12', 'stripe', customer_id => 'cus_k12')});
sleep 2;
check_guest_so_far();
my $stopping = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
my $new = wait_for_new_worker($node, $pid);
cmp_ok(time - $stopping, '<', 9, 'SIGTERM with a row held: the worker left within its grace period');
$app->query_safe('COMMIT');
$app->quit;
is(done_within($k12, 30), 'done', 'SIGTERM with a row held: the next worker finished the repair');
check_at_most_once('locks');

sub check_guest_so_far
{
	is(worker_pid($node), $pid, 'the same worker until it was stopped');
	is(worker_terminations($node), 0, 'no worker exited or was terminated until then');
}

$node->stop;
done_testing();
