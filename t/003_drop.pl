# t/003_drop.pl: TRUNCATE, DROP EXTENSION and DROP DATABASE (with and
# without FORCE) while the worker has requests in flight: none hangs, the
# worker survives (or the launcher starts a new one for the new database or
# the new extension) and the next repair completes.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

# Longest any of these statements may take: the worker must not hold them up.
my $LIMIT = 20;

my $node = celloattr_node('drop');
my $db = $CelloattrTest::DB;

# Queue $n repairs whose requests the fake stalls; returns once some are in flight.
sub busy
{
	my ($prefix, $n) = @_;
	fake_reset();
	fake_seed(stripe_seed($prefix, $n + 1));
	fake_fault({ provider => 'stripe', path_regex => "cus_$prefix", action => 'stall',
		seconds => 2, count => $n });
	queue_stripe($node, $prefix, $n);
	$node->poll_query_until($db,
		"SELECT count(*) > 0 FROM celloattr.jobs WHERE state = 'running'")
	  or die 'no step in flight';
	sleep 0.3;
}

# Run $sql in $in_db, in time; then the next repair completes.
sub survives
{
	my ($what, $in_db, $sql, $prefix, $same_worker) = @_;
	my $pid = worker_pid($node);

	busy($prefix, 6);
	my ($rc, $timed_out, $err) = psql_within($node, $in_db, $sql, $LIMIT);
	ok(!$timed_out && $rc == 0, "$what: done within ${LIMIT}s")
	  or diag "rc $rc: $err";
	$node->safe_psql('postgres', "CREATE DATABASE $db")
	  unless $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_database WHERE datname = '$db'");
	$node->safe_psql($db, 'CREATE EXTENSION IF NOT EXISTS celloattr');
	my $now = $same_worker == 1 ? worker_pid($node)
	  : $same_worker == 2 ? wait_for_new_worker($node, 0)
	  : wait_for_new_worker($node, $pid);
	if ($same_worker == 2)
	{
		# the worker leaves a database without the extension, unless it is
		# back before the worker looked; either way one serves it again
		ok($now, "$what: a worker serves the database again");
	}
	elsif ($same_worker)
	{
		is($now, $pid, "$what: the worker survived");
	}
	else
	{
		isnt($now, $pid, "$what: a new worker serves the new database");
	}
	fake('POST', '/_control/faults/clear');
	is(attribute_one($node, $prefix, 7), 'done', "$what: the next repair completes");
}

survives('TRUNCATE jobs', $db, 'TRUNCATE celloattr.jobs', 't', 1);
survives('TRUNCATE attributions CASCADE', $db,
	'TRUNCATE celloattr.attributions CASCADE', 'u', 1);
survives('DROP EXTENSION', $db, 'DROP EXTENSION celloattr', 'e', 2);
survives('DROP DATABASE', 'postgres', "DROP DATABASE $db", 'd', 0);
survives('DROP DATABASE WITH (FORCE)', 'postgres', "DROP DATABASE $db WITH (FORCE)", 'f', 0);
is(worker_crashes($node), 0, 'the worker never crashed');

$node->stop;
done_testing();
