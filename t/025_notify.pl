# t/025_notify.pl: a session that LISTENs on the channel celloattr hears
# '<id>:<state>' once for each attribution as it finishes (done, failed,
# planned by a dry run, also one finished in the call itself, cancelled by
# cancel() or by a forced repair that supersedes it), only once the state
# is committed, and nothing for a cancel() that rolled back.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use Time::HiRes qw(sleep);
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('notify');
my $db = $CelloattrTest::DB;

fake_reset();
fake_seed(stripe_seed('n', 6));

# The listening session: psql shows the notices it got after each command.
my $listener = $node->background_psql($db);
$listener->query_safe('LISTEN celloattr');
my $out = '';

# Run commands in the listening session until the notices heard include
# every expected payload (or 30 s passed); returns all payloads heard since
# $out was last emptied.
sub heard
{
	my (@expected) = @_;
	for (1 .. 300)
	{
		$out .= $listener->query_safe("SELECT 'tick'");
		my %got = map { $_ => 1 } ($out =~ /with payload "([^"]*)"/g);
		last if !grep { !$got{$_} } @expected;
		sleep 0.1;
	}
	return [ $out =~ /with payload "([^"]*)"/g ];
}

sub attribute
{
	my ($user, $customer, %opt) = @_;
	my $extra = join('', map { ", $_ => $opt{$_}" } sort keys %opt);
	return $node->safe_psql($db, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', '$user', 'stripe',
		                                 customer_id => '$customer'$extra)});
}

my $done1 = attribute('user-n1', 'cus_n1');
my $done2 = attribute('user-n2', 'cus_n2');
my $failed = attribute('user-missing', 'cus_missing');
my $planned = attribute('user-n3', 'cus_n3', dry_run => 'true');
my %state;
$state{$_} = $node->safe_psql($db, "SELECT celloattr.wait($_, '60 s')")
  for ($done1, $done2, $failed, $planned);
is_deeply([ @state{ $done1, $done2, $planned } ], [ 'done', 'done', 'planned' ],
	'the repairs finished');
isnt($state{$failed}, 'done', 'the repair of a missing customer did not succeed');

my @expected = map { "$_:$state{$_}" } ($done1, $done2, $failed, $planned);
my $payloads = heard(@expected);
is_deeply([ sort @$payloads ], [ sort @expected ],
	'the listener heard each finished attribution once, with its state');
like($out, qr/Asynchronous notification "celloattr" with payload "\Q$done1:done\E" received from server process with PID \d+/,
	'notices come on the channel celloattr, from the worker');

# the state a notice announces is committed when it arrives
like($listener->query_safe("SELECT string_agg(id || ':' || state, ',' ORDER BY id)"
		. " FROM celloattr.attributions WHERE id IN ($done1, $done2, $failed, $planned)"), qr/\Q$done1:done,$done2:done,$failed:$state{$failed},$planned:planned\E/,
	'the listener reads the states it heard');

# a dry run with nothing to read (cello_api) is finished in the call itself,
# and heard when the call commits
$out = '';
my $instant = $node->safe_psql($db, q{
	SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-n-instant', 'cello_api',
	                                 email => 'instant@example.com', dry_run => true)});
$payloads = heard("$instant:planned");
is_deeply($payloads, ["$instant:planned"], 'a dry run finished in the call is heard too');

# cancel() notifies when it commits, not when it rolls back; so does a
# forced repair that cancels the attribution it supersedes
$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on; SELECT pg_reload_conf()');
$node->poll_query_until($db,
	"SELECT state = 'paused' FROM celloattr.worker_status WHERE provider = 'stripe'")
  or die 'the worker did not pause';
my $kept = attribute('user-kept', 'cus_n4');
my $cancelled = attribute('user-cancelled', 'cus_n5');
my $superseded = attribute('user-superseded', 'cus_n5');
$node->safe_psql($db, "BEGIN; SELECT celloattr.cancel($kept); ROLLBACK;");
$node->safe_psql($db, "SELECT celloattr.cancel($cancelled)");
my $forced = $node->safe_psql($db, q{
	SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-superseded', 'stripe',
	                                 customer_id => 'cus_n6', force => true, reason => 'corrected')});
$out = '';
$payloads = heard("$cancelled:cancelled", "$superseded:cancelled");
is_deeply([ sort @$payloads ], [ sort("$cancelled:cancelled", "$superseded:cancelled") ],
	'cancel() and a superseding repair notify; a rolled-back cancel() does not');
is($node->safe_psql($db, "SELECT state FROM celloattr.attributions WHERE id = $kept"),
	'queued', 'the rolled-back cancel left its attribution queued');

$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = off; SELECT pg_reload_conf()');
$node->safe_psql($db, "SELECT celloattr.wait($_, '60 s')") for ($kept, $forced);
$out = '';
$payloads = heard("$kept:done", "$forced:done");
is_deeply([ sort @$payloads ], [ sort("$kept:done", "$forced:done") ],
	'the rest finished, each heard once');

$listener->quit;
$node->stop;
done_testing();
