# t/037_forgotten.pl: a step the table shows 'running' past its lease, held
# by no worker, is not left so for good.
#
# The worker forgets a step only after an error that left it no outcome to
# write; here the steps are made 'running' by hand, as such a step would be
# left.  The worker finds them once their lease is over and treats them as
# a dead worker's: claimed again under the same key, or, without a key,
# set aside for an operator.  A lease still running is left alone.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $node = celloattr_node('forgotten', "celloattr.paused = on\n");
my $db = $CelloattrTest::DB;
my $pid = worker_pid($node);

my $seed = guest_seed();
my $stripe = stripe_seed('fg', 2)->{stripe};
$seed->{stripe}{$_} = $stripe->{$_} for qw(customers invoices events settings);
fake_reset();
fake_seed($seed);

my $keyed = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-fg1', 'stripe', customer_id => 'cus_fg1')});
my $later = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-fg2', 'stripe', customer_id => 'cus_fg2')});
my $keyless = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-fg3', 'cello_api', email => 'fg3@example.com')});
$node->safe_psql($db, qq{
	UPDATE celloattr.jobs SET state = 'running', attempts = 1,
	       lease_until = now() - interval '1 second'
	 WHERE attribution_id IN ($keyed, $keyless);
	UPDATE celloattr.jobs SET state = 'running', attempts = 1,
	       lease_until = now() + interval '4 seconds'
	 WHERE attribution_id = $later});
$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = off');
$node->reload;

is($node->safe_psql($db, "SELECT celloattr.wait($keyed, '30 s')"), 'done',
	'a keyed step past its lease: claimed again, done');
is($node->safe_psql($db, "SELECT interruptions || ' ' || attempts FROM celloattr.jobs
	WHERE attribution_id = $keyed AND kind = 'stripe_customer'"), '0 2',
	'a keyed step past its lease: counted as an interruption, then reset by its outcome');
is($node->safe_psql($db, "SELECT celloattr.wait($keyless, '30 s')"), 'failed',
	'a step without a key past its lease: set aside');
like($node->safe_psql($db, "SELECT last_error FROM celloattr.jobs WHERE attribution_id = $keyless"),
	qr/^set aside: .*no idempotency key/, 'a step without a key past its lease: saying why');
is(cello_events()->{'new-signup user-fg3 '} // 0, 0, 'a step without a key past its lease: not sent');

is($node->safe_psql($db, "SELECT state FROM celloattr.jobs WHERE attribution_id = $later AND kind = 'stripe_customer'"),
	'running', 'a lease not over yet: left alone');
is($node->safe_psql($db, "SELECT celloattr.wait($later, '30 s')"), 'done', 'once it is over: taken up');
like(slurp_file($node->logfile), qr/still running past their lease, held by no worker/, 'the log says so');
check_guest($node, $pid, 'forgotten');

$node->stop;
done_testing();
