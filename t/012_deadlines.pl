# t/012_deadlines.pl: a hung provider never holds a step past its timeouts
# or its lease, however busy the worker is with other things.
#
# While another session commits a change to the queue every few ms (each
# commit sets the worker's latch), the fake stalls before its headers,
# stalls halfway through a body, or sits behind a listening socket whose
# backlog is full (connect never completes): each request ends with a
# timeout in the HTTP log within its timeout plus slack, the step is
# retried after backoff, and other steps keep flowing meanwhile.  A step
# that stays running past celloattr.lease (each of its requests within the
# request timeout) is aborted at lease_until and retried; a lease shorter
# than a request's timeout is raised to it, with a warning.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $TIMEOUT_MS = 4000;
my $CONNECT_MS = 2000;
my $LEASE = 6;
# generous: the machine is shared and the worker runs among other tests
my $SLACK_MS = 2500;

my $node = celloattr_node('deadlines', qq{
celloattr.request_timeout = ${TIMEOUT_MS}ms
celloattr.connect_timeout = ${CONNECT_MS}ms
celloattr.poll_interval = 1s
celloattr.max_attempts = 3
celloattr.backoff_base = 1s
celloattr.backoff_max = 2s
celloattr.lease = $LEASE
});
my $db = $CelloattrTest::DB;
my $pid = worker_pid($node);

# A storm of commits that wake the worker: an UPDATE of no rows fires the
# queue's wake-up trigger, and the worker's latch is set at each commit.
$node->safe_psql($db, 'CREATE SEQUENCE storm');
my ($storm_out, $storm_err) = ('', '');
my $storm = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr($db), '-c', q{
		DO $$ BEGIN
			FOR i IN 1..1000000 LOOP
				UPDATE celloattr.jobs SET state = state WHERE false;
				PERFORM nextval('storm');
				COMMIT;
				PERFORM pg_sleep(0.005);
			END LOOP;
		END $$} ],
	'>', \$storm_out, '2>', \$storm_err);
$node->poll_query_until($db, 'SELECT last_value > 20 FROM storm')
  or die "the commit storm did not start: $storm_err";

# A listening socket whose backlog is full: a connect to it never completes.
my $blackhole = IO::Socket::INET->new(Listen => 0, LocalAddr => '127.0.0.1',
	LocalPort => 0, Proto => 'tcp') or die "listen: $!";
my @fillers = map {
	IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $blackhole->sockport,
		Blocking => 0)
} 1 .. 8;

fake_reset();
fake_seed(stripe_seed('d', 20));
# Chargebee: its base URL is the black hole
$node->safe_psql('postgres', qq{
	ALTER SYSTEM SET celloattr.chargebee_api_url = 'http://127.0.0.1:${\ $blackhole->sockport }/api/v2';
	SELECT pg_reload_conf()});
sleep 0.5;

sub attribute
{
	my ($user, $gateway, $customer) = @_;
	return $node->safe_psql($db, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', '$user', '$gateway', customer_id => '$customer')});
}

fake_fault({ provider => 'stripe', method => 'GET', path_regex => '^/v1/customers/cus_d1$',
	action => 'stall', seconds => 30, count => 1 });
fake_fault({ provider => 'stripe', method => 'GET', path_regex => '^/v1/customers/cus_d2$',
	action => 'stall_body', seconds => 30, count => 1 });
my %ids = (
	'stall before the headers' => attribute('user-d1', 'stripe', 'cus_d1'),
	'stall in the middle of the body' => attribute('user-d2', 'stripe', 'cus_d2'),
	'connect never completes' => attribute('user-cb', 'chargebee', 'cb_none'),
);
# the stalled requests are out: other steps must keep flowing beside them
$node->poll_query_until($db, q{SELECT count(*) = 3 FROM celloattr.jobs WHERE state = 'running'})
  or die 'the stalled steps never ran';
my $queued_at = time;
my @others = map { attribute("user-d$_", 'stripe', "cus_d$_") } 10 .. 14;
my $others_done = 1;
for my $id (@others)
{
	$others_done &&= $node->safe_psql($db, "SELECT celloattr.wait($id, '60 s')") eq 'done';
}
my $others_took = time - $queued_at;
ok($others_done, 'other steps done while three requests hang');
cmp_ok($others_took, '<', $TIMEOUT_MS / 1000,
	sprintf('and before the hung requests timed out (%.1f s)', $others_took));

ok(wait_all_final($node, 90), 'the repairs with hung requests ended');

for my $case ('stall before the headers', 'stall in the middle of the body')
{
	my @rows = split /\n/, $node->safe_psql($db, qq{
		SELECT round(duration_ms) || '|' || coalesce(error, '') || '|'
		       || extract(epoch FROM started_at)
		  FROM celloattr.http_log
		 WHERE attribution_id = $ids{$case} AND url LIKE '%/v1/customers/cus_d%'
		 ORDER BY started_at});
	my ($ms, $error, $started) = split /\|/, $rows[0] // '', 3;
	like($error, qr/Timeout was reached|timed out/i, "$case: the request ended with a timeout in the log");
	cmp_ok($ms, '>=', $TIMEOUT_MS - 100, "$case: not before request_timeout ($ms ms)");
	cmp_ok($ms, '<=', $TIMEOUT_MS + $SLACK_MS, "$case: within request_timeout + slack");
	my (undef, undef, $retried) = split /\|/, $rows[1] // '', 3;
	ok(defined $retried && $retried - ($started + $ms / 1000) >= 0.4,
		"$case: retried after backoff");
	is($node->safe_psql($db, qq{
			SELECT state || ' ' || attempts FROM celloattr.jobs
			 WHERE attribution_id = $ids{$case} AND kind = 'stripe_customer'}),
		'done 2', "$case: the step was done at its second attempt");
}

{
	my $case = 'connect never completes';
	my @rows = split /\n/, $node->safe_psql($db, qq{
		SELECT round(duration_ms) || '|' || coalesce(error, '') || '|'
		       || extract(epoch FROM started_at)
		  FROM celloattr.http_log WHERE attribution_id = $ids{$case} ORDER BY started_at});
	is(scalar @rows, 3, "$case: three attempts logged");
	my $prev_end;
	for my $row (@rows)
	{
		my ($ms, $error, $started) = split /\|/, $row, 3;
		like($error, qr/Timeout was reached|timed out/i, "$case: a connect timeout in the log");
		cmp_ok($ms, '<=', $CONNECT_MS + $SLACK_MS, "$case: within connect_timeout + slack ($ms ms)");
		ok($started - $prev_end >= 0.4, "$case: the next attempt after backoff")
		  if defined $prev_end;
		$prev_end = $started + $ms / 1000;
	}
	like($node->safe_psql($db, qq{
			SELECT state || ' ' || attempts || ' ' || last_error FROM celloattr.jobs
			 WHERE attribution_id = $ids{$case}}),
		qr/^failed 3 gave up after 3 attempts: GET .*(Timeout was reached|timed out)/i,
		"$case: the step failed after its attempts, with the reason");
}

# The lease: each request answers within request_timeout, but the step
# needs two of them (the customer read, then its update), longer together
# than the lease.
fake_fault({ provider => 'stripe', path_regex => '^/v1/customers/cus_d3$',
	action => 'stall', seconds => 3.5, count => 0 });
my $leased = attribute('user-d3', 'stripe', 'cus_d3');
$node->poll_query_until($db, qq{
	SELECT count(*) = 1 FROM celloattr.jobs
	 WHERE attribution_id = $leased AND kind = 'stripe_customer' AND state = 'running'})
  or die 'the customer step never ran';
my ($lease_until, $claimed) = split /\|/, $node->safe_psql($db, qq{
	SELECT extract(epoch FROM lease_until) || '|' || extract(epoch FROM now())
	  FROM celloattr.jobs WHERE attribution_id = $leased AND kind = 'stripe_customer'});
cmp_ok($lease_until - $claimed, '<=', $LEASE, 'lease_until is at most the lease ahead');
$node->poll_query_until($db, qq{
	SELECT count(*) = 1 FROM celloattr.http_log
	 WHERE attribution_id = $leased AND error LIKE '%lease%'})
  or die 'the step was never aborted';
my ($ended, $error) = split /\|/, $node->safe_psql($db, qq{
	SELECT extract(epoch FROM started_at) + duration_ms / 1000 || '|' || error
	  FROM celloattr.http_log WHERE attribution_id = $leased AND error LIKE '%lease%'});
like($error, qr/abandoned when the step's lease of $LEASE s ran out/, 'lease: the request in flight was abandoned');
cmp_ok($ended, '<=', $lease_until + 0.5, 'lease: no later than lease_until');
cmp_ok($ended, '>=', $lease_until - $LEASE / 2, 'lease: and not long before it');
like($node->safe_psql($db, qq{
		SELECT state || ' ' || attempts || ' ' || last_error FROM celloattr.jobs
		 WHERE attribution_id = $leased AND kind = 'stripe_customer'}),
	qr/^(queued 1|running 2) POST .*customers.*lease/, 'lease: the step is due again after backoff, its attempt used');
fake('POST', '/_control/faults/clear');
is($node->safe_psql($db, "SELECT celloattr.wait($leased, '60 s')"), 'done', 'lease: retried and done');

# A lease shorter than a request may take is raised to it, with a warning.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET celloattr.lease = 5; ALTER SYSTEM SET celloattr.request_timeout = '20s';
	SELECT pg_reload_conf()});
sleep 0.5;
fake_fault({ provider => 'stripe', method => 'GET', path_regex => '^/v1/customers/cus_d4$',
	action => 'stall', seconds => 2, count => 1 });
my $long = attribute('user-d4', 'stripe', 'cus_d4');
$node->poll_query_until($db, qq{
	SELECT count(*) = 1 FROM celloattr.jobs WHERE attribution_id = $long AND state = 'running'})
  or die 'the step never ran';
cmp_ok($node->safe_psql($db, qq{
		SELECT extract(epoch FROM lease_until - now()) FROM celloattr.jobs WHERE attribution_id = $long}),
	'>', 15, 'a lease of 5 s beside a request_timeout of 20 s is raised to 21 s');
is($node->safe_psql($db, "SELECT celloattr.wait($long, '60 s')"), 'done', 'and the step is done');
like(slurp_file($node->logfile),
	qr/celloattr.lease \(5 s\) is shorter than celloattr.request_timeout \(20000 ms\): steps get a lease of 21 s/,
	'the server log says so');

$storm->kill_kill;
my $storms = $node->safe_psql($db, 'SELECT last_value FROM storm');
cmp_ok($storms, '>', 500, "the worker was woken all along ($storms commits)");
is(worker_pid($node), $pid, 'the same worker all along');
is(worker_crashes($node), 0, 'the worker never crashed');
$node->stop;
done_testing();
