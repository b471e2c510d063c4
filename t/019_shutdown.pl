# t/019_shutdown.pl: a stopping worker lets its transfers finish, and a
# step the worker keeps dying on is set aside.
#
# SIGTERM (pg_terminate_backend) and a fast shutdown of the server arrive
# while a Cello event or a Chargebee redelivery (no idempotency key) is in
# flight: the worker waits for the answer, records it and leaves, so the
# next worker does not send it again.  A worker killed while a Cello event
# is in flight: the next one sets the step aside at once (the event may have
# reached Cello, and has no key), saying why, and retry() brings it back.  A
# keyed Stripe step the worker keeps dying on is set aside after three.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $node = celloattr_node('shutdown', "celloattr.max_attempts = 3\n");
my $db = $CelloattrTest::DB;

my $seed = guest_seed();
push @{ $seed->{chargebee}{customers} }, { id => 'cb_g1', email => 'g1@example.com', age_days => 40 };
push @{ $seed->{chargebee}{events} }, { id => 'ev_g1', event_type => 'payment_succeeded', age_days => 3,
	content => { customer => { id => 'cb_g1' }, transaction => { id => 'txn_g1', customer_id => 'cb_g1',
		amount => 100, currency_code => 'EUR', status => 'success', type => 'payment' } } };
fake_reset();
fake_seed($seed);

# Wait until the fake has seen $n requests of the provider matching $re.
sub wait_fake_requests
{
	my ($provider, $method, $re, $n) = @_;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		my $seen = grep { $_->{method} eq $method && $_->{path} =~ $re } @{ fake_requests($provider) };
		return $seen if $seen >= ($n // 1);
		sleep 0.1;
	}
	die "fewer than $n $method $re at the fake";
}

# 1. SIGTERM while Cello's new-signup is in flight
fake_fault({ provider => 'cello', method => 'POST', path_regex => '^/events', action => 'stall', seconds => 2 });
my $signup = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-g1', 'cello_api',
	email => 'g1@example.com')});
wait_fake_requests('cello', 'POST', qr{^/events});
my $pid = worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$pid = wait_for_new_worker($node, $pid);
is($node->safe_psql($db, "SELECT celloattr.wait($signup, '30 s')"), 'done', 'SIGTERM mid-event: the repair done');
is(cello_events()->{'new-signup user-g1 '}, 1, 'SIGTERM mid-event: the event sent once');
like(slurp_file($node->logfile), qr/celloattr worker stopping: waiting up to \d+ ms for 1 request\(s\) in flight/,
	'SIGTERM mid-event: the worker waited for it');

# 2. SIGTERM while a Chargebee event is re-delivered to Cello's webhook
fake_fault({ provider => 'cello-webhook', method => 'POST', action => 'stall', seconds => 2 });
my $cb = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-g2', 'chargebee',
	customer_id => 'cb_g1')});
wait_fake_requests('cello-webhook', 'POST', qr{.});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$pid = wait_for_new_worker($node, $pid);
is($node->safe_psql($db, "SELECT celloattr.wait($cb, '30 s')"), 'done', 'SIGTERM mid-redelivery: the repair done');
is(chargebee_redeliveries()->{ev_g1}, 1, 'SIGTERM mid-redelivery: re-delivered once');

# 3. a fast shutdown of the server while a Cello transaction is in flight
fake_fault({ provider => 'cello', method => 'POST', path_regex => '^/events', action => 'stall', seconds => 2 });
$node->safe_psql($db, q{SELECT celloattr.cello_transaction('user-g1', 'inv-g1', 10, 'EUR',
	pg_catalog.now() - interval '1 day', 'monthly', 'Team')});
wait_fake_requests('cello', 'POST', qr{^/events}, 2);
$node->stop('fast');
$node->start;
$pid = wait_for_new_worker($node, 0);
is($node->safe_psql($db, "SELECT celloattr.wait($signup, '30 s')"), 'done', 'fast shutdown mid-event: the repair done');
is(cello_events()->{'invoice-paid user-g1 inv-g1'}, 1, 'fast shutdown mid-event: the event sent once');
check_at_most_once('stopping');
is(worker_terminations($node), 0, 'stopping: no worker exited with an error or a signal');

# 4. a Cello event in flight when the worker is killed: it may have reached
# Cello, and it carries no key, so the next worker sets it aside at once
# instead of sending it again; an operator's retry() sends it.
fake_fault({ provider => 'cello', method => 'POST', path_regex => '^/events', action => 'stall',
	seconds => 20, count => 0 });
my $d1 = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-d1', 'cello_api',
	email => 'd1@example.com')});
# Cello events of user-d1 that reached the fake
sub d1_posts
{
	return scalar grep {
		$_->{method} eq 'POST' && $_->{path} =~ m{^/events}
		  && (($_->{json} // {})->{payload}{newUserId} // '') eq 'user-d1'
	} @{ fake_requests('cello') };
}
my $deadline = time + 30;
sleep 0.1 while d1_posts() < 1 && time < $deadline;
kill 'KILL', $pid;
$pid = wait_for_new_worker($node, $pid);
$node->poll_query_until($db, "SELECT state = 'failed' FROM celloattr.attributions WHERE id = $d1")
  or die 'the step was not set aside';
like($node->safe_psql($db, "SELECT state || ' ' || interruptions || ' ' || last_error FROM celloattr.jobs
	WHERE attribution_id = $d1 AND kind = 'cello_signup'"),
	qr/^failed 1 set aside: the worker stopped while this step was running, and its request carries no idempotency key/,
	'a death mid-event: the step set aside at once, saying why');
sleep 2;
is(d1_posts(), 1, 'a death mid-event: sent once, not again');
fake('POST', '/_control/faults/clear');
$node->safe_psql($db, "SELECT celloattr.retry($d1)");
is($node->safe_psql($db, "SELECT celloattr.wait($d1, '30 s')"), 'done', 'a death mid-event: retry() finishes it');
is($node->safe_psql($db, "SELECT interruptions FROM celloattr.jobs WHERE attribution_id = $d1"),
	0, 'a death mid-event: the count starts over');

# 5. a replay-safe step in flight each time the worker is killed: set aside
# after 3 (its repeats change nothing at Stripe: the same key)
fake_seed(stripe_seed('d', 1));
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/customers/cus_d1', action => 'stall',
	seconds => 20, count => 0 });
my $s1 = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-sd1', 'stripe',
	customer_id => 'cus_d1')});
sub s1_posts
{
	return scalar grep { $_->{method} eq 'POST' && $_->{path} =~ m{^/v1/customers/cus_d1} }
	  @{ fake_requests('stripe') };
}
for my $kill (1 .. 3)
{
	$deadline = time + 30;
	sleep 0.1 while s1_posts() < $kill && time < $deadline;
	kill 'KILL', $pid;
	$pid = wait_for_new_worker($node, $pid);
}
$node->poll_query_until($db, "SELECT state = 'failed' FROM celloattr.attributions WHERE id = $s1")
  or die 'the Stripe step was not set aside';
like($node->safe_psql($db, "SELECT state || ' ' || interruptions || ' ' || last_error FROM celloattr.jobs
	WHERE attribution_id = $s1 AND kind = 'stripe_customer'"),
	qr/^failed 3 set aside: the worker stopped while this step was running, 3 times in a row/,
	'three deaths on a keyed step: set aside after the third');
cmp_ok($node->safe_psql($db, "SELECT attempts FROM celloattr.jobs WHERE attribution_id = $s1 AND kind = 'stripe_customer'"),
	'<=', 3, 'three deaths: within max_attempts');
fake('POST', '/_control/faults/clear');

$node->stop('immediate');
done_testing();
