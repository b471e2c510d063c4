# t/009_orphans.pl: steps a stopped worker left running are taken up again
# even when the next worker cannot lock the queue at once.
#
# The worker is stopped (SIGTERM) while a request is in flight, so its step
# stays 'running'.  A session holds the jobs table locked while the next
# worker starts: that worker must keep trying to requeue the orphan (it
# takes its locks only conditionally) instead of giving up on it, and the
# repair must finish once the lock is gone.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('orphans');
my $db = $CelloattrTest::DB;

fake_reset();
fake_seed(stripe_seed('or', 1));
# the metadata update hangs long enough for the worker to be stopped meanwhile
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/customers/',
			 action => 'stall', seconds => 3, count => 1 });
queue_stripe($node, 'or', 1);

$node->poll_query_until($db, q{SELECT count(*) = 1 FROM celloattr.jobs
	WHERE state = 'running' AND kind = 'stripe_customer' AND attempts = 1})
  or die 'the step never ran';
sleep 0.5;      # its POST is out
my $old = worker_pid($node);

my $locker = $node->background_psql($db);
$locker->query_safe('BEGIN; LOCK TABLE celloattr.jobs IN EXCLUSIVE MODE');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old)");
my $new = wait_for_new_worker($node, $old);
sleep 2;        # the new worker tries, and cannot lock
is($node->safe_psql($db, q{SELECT state FROM celloattr.jobs WHERE kind = 'stripe_customer'}),
	'running', 'the orphan waits while the queue is locked');

$locker->query_safe('COMMIT');
$locker->quit;
ok(wait_all_final($node, 60), 'the orphan was taken up once the lock was gone');
check_stripe_effects($node, 'or', 1);
is(worker_pid($node), $new, 'by the new worker');

done_testing();
