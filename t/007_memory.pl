# t/007_memory.pl: the worker's memory stays flat over many steps.
#
# Runs 10,000 steps (100,000 with CELLOATTR_LONG_TESTS=1) in batches, each
# a Stripe repair of two steps and four requests, and samples the worker's
# private memory (RssAnon: its shared buffers do not count) after each
# batch.  Growth after warm-up beyond a small margin is a leak.  The peak
# (VmHWM) is reported.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $STEPS = $ENV{CELLOATTR_LONG_TESTS} ? 100_000 : 10_000;
my $BATCH = 1_000;               # steps
my $CUSTOMERS = 50;
my $MARGIN_KB = 4 * 1024;

my $node = celloattr_node('memory', "celloattr.max_in_flight = 16\n");
my $db = $CelloattrTest::DB;
my $pid = worker_pid($node);

sub status_kb
{
	my ($field) = @_;
	my $status = slurp_file("/proc/$pid/status");
	return $status =~ /^$field:\s+(\d+) kB/m ? $1 : die "no $field for $pid";
}

fake_reset();
my $seed = stripe_seed('m', $CUSTOMERS);
delete $seed->{stripe}{$_} for qw(invoices events);
fake_seed($seed);

my (@anon, $t0);
$t0 = time;
for my $b (1 .. $STEPS / $BATCH)
{
	# each repair is a customer step and a payments step
	$node->safe_psql($db, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-m$b-' || i, 'stripe',
		                                 customer_id => 'cus_m' || (1 + i % $CUSTOMERS))
		  FROM generate_series(1, ${\ ($BATCH / 2) }) i});
	wait_all_final($node, 300) or die "batch $b did not finish";
	# the log is the user's to trim; keep the database small
	$node->safe_psql($db, 'TRUNCATE celloattr.http_log');
	push @anon, status_kb('RssAnon');
	note sprintf('%6d steps: RssAnon %d kB, VmRSS %d kB', $b * $BATCH, $anon[-1], status_kb('VmRSS'));
}
my $seconds = time - $t0;

is($node->safe_psql($db, q{SELECT state || ' ' || count(*) FROM celloattr.jobs GROUP BY state}),
	"done $STEPS", "$STEPS steps done");
is(worker_pid($node), $pid, 'by one worker');
my $warm = $anon[1];
my $peak = (sort { $b <=> $a } @anon[ 1 .. $#anon ])[0];
cmp_ok($peak - $warm, '<=', $MARGIN_KB,
	"private memory flat after warm-up: $warm kB at 2k steps, at most $peak kB up to $STEPS");
note sprintf('worker peak RSS (VmHWM) after %d steps: %d kB; %.0f steps/s',
	$STEPS, status_kb('VmHWM'), $STEPS / $seconds);

$node->stop;
done_testing();
