# t/026_progress.pl: the counts behind celloattr.progress keep up with a
# bulk repair without making anyone wait, and stay right.
#
# An application's open transaction that cancel()ed one attribution of a
# bulk repair holds a row of that batch's counts (batch_counts): the worker
# drains the rest of the batch meanwhile and waits for none of it (no lock
# timeout, no outcome recorded one at a time for a lock), and once the
# application commits the batch reads right.  A drained batch keeps a row
# or two of counts, not one per change.  A dump restored counts its
# attributions again (batch_counts itself is not dumped) and sends no
# NOTIFY for the finished attributions it brings back.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 30;
my $node = celloattr_node('progress');
my $db = $CelloattrTest::DB;

# The batches whose counts and attributions differ (as sql/operations).
my $miscounted = slurp_file("$FindBin::RealBin/../test/sql/miscounted.sql")
  . 'SELECT count(*) FROM miscounted;';

sub progress_of
{
	my ($batch) = @_;
	return $node->safe_psql($db, qq{
		SELECT attributions, queued, running, done, failed, cancelled_or_planned, requests_left
		  FROM celloattr.progress WHERE batch = $batch});
}

sub set_paused
{
	my ($on) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET celloattr.paused = $on");
	$node->reload;
	$node->poll_query_until($db, qq{
		SELECT bool_and(state = 'paused') = $on FROM celloattr.worker_status})
	  or die "the worker did not take paused = $on";
}

fake_reset();
fake_seed(stripe_seed('pg', $N));
set_paused('true');
queue_stripe($node, 'pg', $N);
my $batch = $node->safe_psql($db,
	q{SELECT min(id) FROM celloattr.attributions WHERE new_user_id LIKE 'user-pg%'});
is($node->safe_psql($db,
		q{SELECT count(DISTINCT batch) FROM celloattr.attributions WHERE new_user_id LIKE 'user-pg%'}),
	'1', 'the repair query is one batch');
is(progress_of($batch), "$N|$N|0|0|0|0|" . 4 * $N, 'queued: all of it, 4 requests each at the least');

# the application cancels one of them and keeps its transaction open
my $held = $node->safe_psql($db,
	"SELECT id FROM celloattr.attributions WHERE new_user_id = 'user-pg$N'");
my $app = $node->background_psql($db);
$app->query_safe("BEGIN; SELECT celloattr.cancel($held)");
my $log_start = -s $node->logfile;

set_paused('false');
$node->poll_query_until($db, qq{
	SELECT count(*) = $N - 1 FROM celloattr.attributions
	 WHERE new_user_id LIKE 'user-pg%' AND state NOT IN ('queued', 'running')})
  or die 'the rest of the batch did not finish';
my $log = substr(slurp_file($node->logfile), $log_start);
unlike($log, qr/lock timeout/, 'the worker met no lock timeout while the batch was held');
unlike($log, qr/could not record/, 'nor recorded an outcome one at a time');
is(progress_of($batch), "$N|1|0|" . ($N - 1) . '|0|0|4',
	'while the application holds its cancel: the rest done, its attribution still queued');

$app->query_safe('COMMIT');
$app->quit;
is(progress_of($batch), "$N|0|0|" . ($N - 1) . '|0|1|0', 'committed: cancelled, nothing left');
is($node->safe_psql($db, $miscounted), '0', 'the counts agree with the attributions');
cmp_ok($node->safe_psql($db, "SELECT count(*) FROM celloattr.batch_counts WHERE batch = $batch"),
	'<=', 2, 'the drained batch keeps a row or two of counts');
check_stripe_effects_but_one();

# a dump restored counts the attributions again
my $before = progress_of($batch);
my $dump = PostgreSQL::Test::Utils::tempdir() . '/progress.dump';
IPC::Run::run([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr($db) ])
  or die 'pg_dump failed';
$node->safe_psql('postgres', "DROP DATABASE $db");
$node->safe_psql('postgres', "CREATE DATABASE $db");
my $listener = $node->background_psql($db);
$listener->query_safe('LISTEN celloattr');
my ($out, $err);
IPC::Run::run([ 'pg_restore', '--exit-on-error', '-d', $node->connstr($db), $dump ],
	'>', \$out, '2>', \$err)
  or die "pg_restore failed: $err";
is(progress_of($batch), $before, 'restored: the batch reads as before');
is($node->safe_psql($db, $miscounted), '0', 'restored: the counts agree with the attributions');
unlike($listener->query_safe("SELECT 'tick'"), qr/Asynchronous notification/,
	'restored: no notice for attributions that finished before the dump');
$listener->quit;

# Every repair of the batch but the cancelled one took effect once.
sub check_stripe_effects_but_one
{
	is( $node->safe_psql($db, q{
			SELECT state || ' ' || count(*) FROM celloattr.attributions
			 WHERE new_user_id LIKE 'user-pg%' GROUP BY state ORDER BY state}),
		"cancelled 1\ndone " . ($N - 1), 'each repair done but the cancelled one');
	my %resent;
	for my $r (@{ fake_requests('stripe') })
	{
		$resent{ $1 }++ if $r->{method} eq 'POST' && $r->{path} =~ m{^/v1/events/(evt_pg\d+)/retry$}
		  && !$r->{idempotent_replay};
	}
	is(scalar(keys %resent), $N - 1, 'the events of the others resent');
	is(scalar(grep { $resent{$_} > 1 } keys %resent), 0, 'each once');
}

$node->stop;
done_testing();
