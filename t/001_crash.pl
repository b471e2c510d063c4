# t/001_crash.pl: kill -9 of the worker and immediate shutdowns of the
# whole server while requests are in flight lose nothing and change nothing
# twice.
#
# The fake stalls Stripe's answers so that each kill lands mid-request; with
# "apply" it also carries out some requests and then stalls the answer, so
# the worker dies after the effect and before it learns of it.  Each step is
# then sent again with its idempotency key, and the checks at the fake
# (CelloattrTest::check_stripe_effects) prove each change happened once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $KILLS = $ENV{CELLOATTR_LONG_TESTS} ? 20 : 6;
my $SHUTDOWNS = $ENV{CELLOATTR_LONG_TESTS} ? 6 : 2;
my $N = 24;

my $node = celloattr_node('crash', "celloattr.max_in_flight = 8\n");
my $db = $CelloattrTest::DB;

# Faults that keep requests in flight: every customer update stalls, some
# are applied before their answer stalls, and so are some resends.
sub stall_everything
{
	my ($prefix) = @_;
	fake_fault({ provider => 'stripe', method => 'POST',
		path_regex => "^/v1/customers/cus_$prefix", action => 'stall_body',
		apply => JSON::PP::true, seconds => 2, count => 4 });
	fake_fault({ provider => 'stripe', method => 'POST',
		path_regex => "^/v1/events/evt_$prefix.*/retry", action => 'stall_body',
		apply => JSON::PP::true, seconds => 2, count => 4 });
	fake_fault({ provider => 'stripe', method => 'POST',
		path_regex => "^/v1/", action => 'stall', seconds => 1.5, count => 0 });
}

sub in_flight
{
	my ($node) = @_;
	my ($rc, $out) = psql_may_fail($node, $db,
		"SELECT count(*) FROM celloattr.jobs WHERE state = 'running'");
	return $rc == 0 ? $out : 0;
}

# Wait (a little while) until steps are in flight, so the blow lands there.
sub wait_in_flight
{
	my ($node) = @_;
	for (1 .. 50)
	{
		return 1 if in_flight($node) > 0;
		sleep 0.1;
	}
	return 0;
}

# Steps the worker found left running by its killed predecessor and ran
# again, from the server log after $offset.
sub steps_run_again
{
	my ($node, $offset) = @_;
	my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset);
	my $n = 0;
	$n += $1 while $log =~ /(\d+) step\(s\) left running by a previous worker are due again/g;
	return $n;
}

# A step in flight at three kills in a row is set aside for an operator
# (a worker that dies on it must not send it forever): retry() it, as an
# operator would, and it finishes like the others.  Returns how many.
sub retry_set_aside
{
	my ($node, $prefix) = @_;
	my $ids = $node->safe_psql($db, qq{
		SELECT string_agg(DISTINCT a.id::text, ',') FROM celloattr.attributions a
		  JOIN celloattr.jobs j ON j.attribution_id = a.id
		 WHERE a.new_user_id LIKE 'user-$prefix%' AND j.state = 'failed'
		   AND j.last_error LIKE 'set aside: the worker stopped while this step was running%'});
	return 0 if $ids eq '';
	$node->safe_psql($db, "SELECT celloattr.retry(id) FROM unnest('{$ids}'::bigint[]) id");
	wait_all_final($node, 60);
	return scalar(split /,/, $ids);
}

# ---- kill -9 of the worker, at different points
my $offset = -s $node->logfile;
fake_reset();
fake_seed(stripe_seed('k', $N));
stall_everything('k');
queue_stripe($node, 'k', $N);

my $pid = worker_pid($node);
my $landed = 0;
for my $kill (1 .. $KILLS)
{
	# vary the moment: just claimed, mid-request, mid-body, recording
	sleep(0.2 + 0.4 * ($kill % 4));
	$landed++ if wait_in_flight($node);
	kill 'KILL', $pid;
	$pid = wait_for_new_worker($node, $pid);
	stall_everything('k') if $kill % 2 == 0;
}
fake('POST', '/_control/faults/clear');
ok(wait_all_final($node, 180), "k: all attributions final after $KILLS kills");
note 'k: ' . retry_set_aside($node, 'k') . ' repair(s) set aside and retried';
cmp_ok($landed, '>=', $KILLS / 2, "k: $landed of $KILLS kills landed with steps in flight");
cmp_ok(steps_run_again($node, $offset), '>', 0, 'k: steps cut off by a kill ran again');
check_stripe_effects($node, 'k', $N);

# ---- immediate shutdown and restart of the whole server
$offset = -s $node->logfile;
fake_reset();
fake_seed(stripe_seed('i', $N));
stall_everything('i');
queue_stripe($node, 'i', $N);
for my $round (1 .. $SHUTDOWNS)
{
	sleep 0.5 * $round;
	wait_in_flight($node);
	$node->stop('immediate');
	$node->start;
	stall_everything('i');
}
fake('POST', '/_control/faults/clear');
ok(wait_all_final($node, 180), "i: all attributions final after $SHUTDOWNS immediate shutdowns");
note 'i: ' . retry_set_aside($node, 'i') . ' repair(s) set aside and retried';
cmp_ok(steps_run_again($node, $offset), '>', 0, 'i: steps cut off by a shutdown ran again');
check_stripe_effects($node, 'i', $N);

note "kills survived: $KILLS, immediate shutdowns survived: $SHUTDOWNS";
$node->stop;
done_testing();
