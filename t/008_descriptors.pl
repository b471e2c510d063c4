# t/008_descriptors.pl: transfers never exceed the descriptors the process
# can spare.
#
# With max_files_per_process at its minimum, PostgreSQL lends external code
# only a handful of descriptors (a third of max_safe_fds).  A burst with
# celloattr.max_in_flight far above that, against a fake that holds every
# answer back, must finish with every repair done: a transfer that finds no
# descriptor free waits (a local shortage, no attempt used), it is never
# recorded as the provider's failure, and the worker never dies of EMFILE.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 60;
my $node = celloattr_node('descriptors',
	"max_files_per_process = 64\ncelloattr.max_in_flight = 200\n");
my $db = $CelloattrTest::DB;
my $pid = worker_pid($node);

fake_reset();
fake_seed(stripe_seed('fd', $N));
# every answer held back a little, so many transfers want to be open at once
fake_fault({ provider => 'stripe', action => 'stall', seconds => 0.2, count => 0 });

queue_stripe($node, 'fd', $N);
ok(wait_all_final($node, 240), 'the burst finished');
check_stripe_effects($node, 'fd', $N);

# the shortage happened: the fake never saw more transfers at once than the
# process could spare, far below max_in_flight
my @at = sort { $a <=> $b } map { $_->{at} } @{ fake_requests('stripe') };
my $most = 0;
for my $i (0 .. $#at)
{
	my $j = $i;
	$j++ while $j <= $#at && $at[$j] < $at[$i] + 0.1;
	$most = $j - $i if $j - $i > $most;
}
note "most requests arriving within 0.1 s: $most";
cmp_ok($most, '<', 40, 'transfers in flight stayed far below max_in_flight');

is($node->safe_psql($db, q{SELECT count(*) FROM celloattr.jobs WHERE state = 'failed'}),
	'0', 'no step failed for lack of descriptors');
is($node->safe_psql($db, q{SELECT max(attempts) FROM celloattr.jobs}),
	'1', 'waiting for a descriptor used no attempt');
is(worker_pid($node), $pid, 'one worker throughout');
is(scalar(worker_crashes($node)), 0, 'no worker died');

done_testing();
