# t/036_unsure.pl: a request without an idempotency key that fails after it
# went out is set aside, never sent again by the worker.
#
# Cello v1 events and Chargebee redeliveries to Cello's webhook carry no
# key: when a timeout or a cut connection ends one after its bytes left,
# the provider may have taken it, and a retry could count the event twice
# (a referrer paid twice).  Such a step fails as "set aside", for an
# operator to check and retry().  What certainly did not arrive (no
# connection at all), and every request that has a key or changes nothing
# (the ucc check, Stripe), is still retried as before.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IO::Socket::INET;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('unsure', qq{
celloattr.request_timeout = 2s
celloattr.max_attempts = 4
celloattr.backoff_max = 1s
});
my $db = $CelloattrTest::DB;
my $pid = worker_pid($node);

my $seed = guest_seed();
push @{ $seed->{chargebee}{customers} }, { id => 'cb_u1', email => 'u1@example.com', age_days => 40 };
push @{ $seed->{chargebee}{events} }, {
	id => 'ev_u1', event_type => 'payment_succeeded', age_days => 3,
	content => {
		customer => { id => 'cb_u1' },
		transaction => { id => 'txn_u1', customer_id => 'cb_u1', amount => 4900,
			currency_code => 'EUR', status => 'success', type => 'payment' } } };
fake_reset();
fake_seed($seed);

sub attribute { return attribute_in($node, @_); }

sub step
{
	my ($id, $kind) = @_;
	return $node->safe_psql($db, qq{
		SELECT state || ' ' || attempts || ' ' || coalesce(last_error, '') FROM celloattr.jobs
		 WHERE attribution_id = $id AND kind = '$kind'});
}

# 1. A Cello event that times out after it went out (Cello takes it, late).
fake_fault({ provider => 'cello', method => 'POST', path_regex => '^/events', action => 'stall',
	seconds => 4, count => 1 });
my $a1 = attribute('user-u1', 'cello_api', "email => 'u1\@example.com'");
is($node->safe_psql($db, "SELECT celloattr.wait($a1, '60 s')"), 'failed', 'event timed out: the repair waits for an operator');
like(step($a1, 'cello_signup'), qr/^failed 1 set aside: POST \S+\/events failed after the request went out \(Timeout/,
	'event timed out: set aside after one attempt, saying why');
sleep 3;	# the stalled answer has come by now
is(cello_events()->{'new-signup user-u1 '}, 1, 'event timed out: Cello took it once, and only once');
# an operator who finds it in Cello's event feed says so: recorded as sent, not sent
is($node->safe_psql($db, "SELECT celloattr.mark_delivered($a1)"), '1', 'event timed out: mark_delivered() takes the step');
is($node->safe_psql($db, "SELECT celloattr.wait($a1, '30 s')"), 'done', 'event timed out: then the repair is done');
like($node->safe_psql($db, "SELECT state || ' ' || result::text FROM celloattr.jobs
	WHERE attribution_id = $a1 AND kind = 'cello_signup'"), qr/^done \{"delivered_per": "\w+"\}$/,
	'event timed out: the step says who vouched for it');
sleep 1;
is(cello_events()->{'new-signup user-u1 '}, 1, 'event timed out: still taken once');
# nothing else is set aside for want of a key there
my ($rc, $out, $err) = $node->psql($db, "SELECT celloattr.mark_delivered($a1)");
like($err, qr/has no step set aside for want of an idempotency key/, 'mark_delivered() of nothing set aside: an error');

# 2. The ucc check before it (a GET, nothing changes) times out: retried.
fake_fault({ provider => 'cello', method => 'GET', path_regex => '^/referral-codes/', action => 'stall',
	seconds => 3, count => 1 });
my $a2 = attribute('user-u2', 'cello_api', "email => 'u2\@example.com'");
is($node->safe_psql($db, "SELECT celloattr.wait($a2, '60 s')"), 'done', 'a read that timed out: retried, done');
like(step($a2, 'cello_signup'), qr/^done 2 /, 'a read that timed out: two attempts');
is(cello_events()->{'new-signup user-u2 '}, 1, 'a read that timed out: the event sent once');

# 3. A Chargebee redelivery cut in the middle of Cello's answer.
fake_fault({ provider => 'cello-webhook', method => 'POST', path_regex => '.', action => 'stall_body',
	seconds => 3, apply => JSON::PP::true, count => 1 });
my $a3 = attribute('user-u3', 'chargebee', "customer_id => 'cb_u1'");
is($node->safe_psql($db, "SELECT celloattr.wait($a3, '60 s')"), 'failed', 'redelivery cut: the repair waits for an operator');
like(step($a3, 'chargebee_redeliver'), qr/^failed 1 set aside: POST /, 'redelivery cut: set aside after one attempt');
is(chargebee_redeliveries()->{ev_u1}, 1, 'redelivery cut: Cello took it once');

# 4. A connection dropped with no answer at all: still unsure, set aside.
fake_fault({ provider => 'cello', method => 'POST', path_regex => '^/events', action => 'drop', count => 0 });
my $a4 = attribute('user-u4', 'cello_api', "email => 'u4\@example.com'");
is($node->safe_psql($db, "SELECT celloattr.wait($a4, '60 s')"), 'failed', 'connection dropped: set aside');
like(step($a4, 'cello_signup'), qr/^failed 1 set aside: /, 'connection dropped: after one attempt');
is(cello_events()->{'new-signup user-u4 '} // 0, 0, 'connection dropped: nothing taken, nothing doubled');
fake('POST', '/_control/faults/clear');
# an operator who finds no such event at Cello sends it again
$node->safe_psql($db, "SELECT celloattr.retry($a4)");
is($node->safe_psql($db, "SELECT celloattr.wait($a4, '30 s')"), 'done', 'connection dropped: retry() by an operator sends it');
is(cello_events()->{'new-signup user-u4 '}, 1, 'connection dropped: taken once after the retry');

# 5. Nothing can have arrived: no connection (a port nobody listens on).
my $closed = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
  or die "no socket: $!";
my $dead_port = $closed->sockport;
close $closed;
my $cello_url = $node->safe_psql('postgres', 'SHOW celloattr.cello_api_url');
$node->safe_psql('postgres', "ALTER SYSTEM SET celloattr.cello_api_url = 'http://127.0.0.1:$dead_port/cello'");
$node->reload;
my $a5 = attribute('user-u5', 'cello_api', "email => 'u5\@example.com'");
$node->poll_query_until($db, "SELECT attempts >= 2 FROM celloattr.jobs WHERE attribution_id = $a5")
  or die 'the refused connection was not retried';
like(step($a5, 'cello_signup'), qr/^(queued|running) /, 'no connection: retried, not set aside');
$node->safe_psql('postgres', "ALTER SYSTEM SET celloattr.cello_api_url = '$cello_url'");
$node->reload;
is($node->safe_psql($db, "SELECT celloattr.wait($a5, '60 s')"), 'done', 'no connection: done once Cello is back');
is(cello_events()->{'new-signup user-u5 '}, 1, 'no connection: the event sent once');

check_at_most_once('unsure');
check_guest($node, $pid, 'unsure');

$node->stop;
done_testing();
