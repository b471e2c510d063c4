# t/039_standby.pl: a hot standby starts no worker and logs nothing from
# celloattr; promoted, it starts the worker, which carries out what the old
# primary left queued, and only that.
#
# The launcher registers with BgWorkerStart_RecoveryFinished (src/worker/launcher.c),
# so the postmaster of a standby never starts it, and no celloattr process
# runs there however long it lives: through streamed repairs, sessions that
# read the queue and call celloattr.wait() (it follows the primary's worker
# through replication), a call that would queue (refused: read-only), a
# reload, a restartpoint and a restart.  Then a switchover: the primary,
# paused with repairs queued, is stopped, the standby promoted; its
# launcher starts the worker, which carries them out, once, and nothing the
# old primary had done is sent again.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 4;
my $db = $CelloattrTest::DB;
# what a standby's walreceiver logs when its primary goes away
my $WALRECEIVER = qr/walreceiver|primary server|WAL stream|end-of-streaming|to primary:/;

my $primary = celloattr_node('primary', "celloattr.poll_interval = 1s\n", allows_streaming => 1);
fake_reset();
my $seed = stripe_seed('sb', $N);
push @{ $seed->{stripe}{$_} }, @{ stripe_seed('sq', $N)->{stripe}{$_} } for qw(customers invoices events);
fake_seed($seed);

# wait() is one long statement: without feedback, the primary's vacuum
# may remove rows its snapshot needs, and recovery cancels it
my $standby = celloattr_standby($primary, 'standby', "hot_standby_feedback = on\n");
$primary->wait_for_catchup($standby);

# celloattr processes on a node, as "backend_type" lines
sub celloattr_processes
{
	my ($node) = @_;
	return $node->safe_psql('postgres', q{
		SELECT string_agg(backend_type, ', ' ORDER BY backend_type) FROM pg_stat_activity
		 WHERE backend_type LIKE 'celloattr%'});
}

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is(celloattr_processes($primary), 'celloattr launcher, celloattr worker', 'the primary runs the launcher and the worker');
is(celloattr_processes($standby), '', 'the standby runs neither');

# 1. Repairs on the primary, followed from a session on the standby.
queue_stripe($primary, 'sb', $N);
$primary->wait_for_catchup($standby);
my $first = $standby->safe_psql($db, q{SELECT min(id) FROM celloattr.attributions WHERE new_user_id LIKE 'user-sb%'});
is($standby->safe_psql($db, "SELECT celloattr.wait($first, '60 s')"), 'done',
	'wait() on the standby follows the primary\'s worker');
ok(wait_all_final($primary, 60), 'the primary finished its repairs');
$primary->wait_for_catchup($standby);
is($standby->safe_psql($db, q{SELECT string_agg(state || ' ' || n, ', ') FROM
	(SELECT state, count(*) n FROM celloattr.jobs GROUP BY state) s}),
	'done ' . (3 * $N), 'the standby holds the finished steps');
check_stripe_effects($primary, 'sb', $N);

# 2. What the standby goes through: a reload, a restartpoint, a restart, a
# pause on the primary (ALTER SYSTEM: not replicated, postgresql.auto.conf is
# the primary's own) and repairs queued meanwhile.
$standby->safe_psql('postgres', 'SELECT pg_reload_conf()');
$primary->safe_psql('postgres', 'CHECKPOINT');
$primary->wait_for_catchup($standby);
$standby->safe_psql('postgres', 'CHECKPOINT');
$standby->restart;
$primary->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on');
$primary->reload;
$primary->poll_query_until($db, q{SELECT current_setting('celloattr.paused') = 'on'})
  or die 'the primary did not pause';
queue_stripe($primary, 'sq', $N);
$primary->wait_for_catchup($standby);
is($standby->safe_psql($db, q{SELECT count(*) FROM celloattr.jobs WHERE state = 'queued'}),
	$N, 'the queued repairs reached the standby');
is($standby->safe_psql('postgres', q{SELECT current_setting('celloattr.paused')}), 'off',
	'the standby has no pause of its own');

# A session on the standby cannot queue: the read-only error, nothing else.
my $offset = -s $standby->logfile;
my ($rc, $out, $err) = $standby->psql($db,
	q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-nope', 'stripe')});
like($err, qr/ERROR:  cannot execute .* in a read-only transaction/, 'queueing on the standby: refused as read-only');
is(log_problems($standby, $offset, qr/in a read-only transaction|STATEMENT:/), '',
	'queueing on the standby: no other error');

is(celloattr_processes($standby), '', 'the standby still runs no celloattr process');
is(log_problems($standby, 0, qr/in a read-only transaction|$WALRECEIVER/), '',
	'the standby logged no warning or error (but the refusal, and its walreceiver\'s stop at the restart)');
unlike(slurp_file($standby->logfile), qr/celloattr (?:worker|launcher)/, 'nothing of the worker or launcher in its log');
my $before_promotion = -s $standby->logfile;

# 3. Switchover: the paused primary stops, the standby is promoted.
my $seq_before = scalar @{ fake_requests('stripe') };
$primary->stop('fast');
$standby->promote;
my $pid = wait_for_new_worker($standby, 0);
ok($pid, 'promoted: the launcher started the worker');
like(celloattr_processes($standby), qr/^celloattr launcher, celloattr worker$/, 'promoted: launcher and worker run');
ok(wait_all_final($standby, 60), 'promoted: the queued repairs finished');
check_stripe_effects($standby, 'sq', $N);
check_stripe_effects($standby, 'sb', $N);
my @again = grep { $_->{path} =~ /sb\d/ } @{ fake_requests('stripe') }[ $seq_before .. $#{ fake_requests('stripe') } ];
is(scalar @again, 0, 'promoted: nothing the old primary had done was sent again');
is(log_problems($standby, $before_promotion, $WALRECEIVER), '',
	'promoted: no warning or error (but its walreceiver\'s, as the primary stopped)');
check_guest($standby, $pid, 'promoted');

$standby->stop;
done_testing();
