# t/014_stop_rights.pl: no role without the rights can stop the worker, or
# keep it stopped.
#
# DROP DATABASE of the worker's database asks the worker to leave only when
# PostgreSQL will let the drop through: a role with no rights, the owner of
# another database, IF EXISTS of a missing one, a drop inside a transaction
# block or of the current database leave the worker alone, with its
# requests in flight.  A drop cancelled while it waits for the worker to
# leave (statement_timeout, pg_cancel_backend, pg_terminate_backend) withdraws its
# request: the worker stays.  A member of pg_signal_backend cannot signal
# the worker or the launcher.  A drop by the database's owner (no
# superuser) goes through, and a new worker serves the new database.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $node = celloattr_node('stop_rights');
my $db = $CelloattrTest::DB;

$node->safe_psql('postgres', qq{
	CREATE ROLE nobody LOGIN;
	CREATE ROLE other_owner LOGIN CREATEDB;
	CREATE DATABASE other OWNER other_owner;
	CREATE ROLE signaller LOGIN IN ROLE pg_signal_backend, pg_monitor;
	CREATE ROLE db_owner LOGIN CREATEDB;
	ALTER DATABASE $db OWNER TO db_owner;});

my $pid = worker_pid($node);
my $launcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'celloattr launcher'");

# Repairs whose first request the fake holds for a while: in flight.
sub in_flight
{
	my ($prefix, $n, $seconds) = @_;
	fake_reset();
	fake_seed(stripe_seed($prefix, $n));
	fake_fault({ provider => 'stripe', path_regex => "cus_$prefix", action => 'stall',
		seconds => $seconds, count => $n });
	queue_stripe($node, $prefix, $n);
	$node->poll_query_until($db,
		"SELECT count(*) > 0 FROM celloattr.jobs WHERE state = 'running'")
	  or die 'no step in flight';
}

# The worker is the same, did not leave, and its repairs of the prefix
# ended done with every step at its first attempt: nothing was abandoned.
sub undisturbed
{
	my ($what, $prefix, $n, $offset) = @_;
	ok(wait_all_final($node, 60), "$what: the repairs ended");
	is(worker_pid($node), $pid, "$what: the same worker");
	unlike(slurp_file($node->logfile, $offset), qr/celloattr worker stopping/,
		"$what: the worker never left");
	is( $node->safe_psql($db, qq{
			SELECT string_agg(DISTINCT a.state || ' ' || j.attempts, ',')
			  FROM celloattr.attributions a JOIN celloattr.jobs j ON j.attribution_id = a.id
			 WHERE a.new_user_id LIKE 'user-$prefix%'}),
		'done 1', "$what: all $n done, no step started twice");
}

# Refused: each runs while requests are in flight.
my @refused = (
	[ 'a role with no rights', 'postgres', 'nobody', "DROP DATABASE $db",
		qr/must be owner of database $db/ ],
	[ 'WITH (FORCE), no rights', 'postgres', 'nobody', "DROP DATABASE $db WITH (FORCE)",
		qr/must be owner of database $db/ ],
	[ 'the owner of another database', 'other', 'other_owner', "DROP DATABASE $db",
		qr/must be owner of database $db/ ],
	[ 'IF EXISTS of a missing database', 'postgres', 'nobody', 'DROP DATABASE IF EXISTS no_such_db',
		qr/database "no_such_db" does not exist, skipping/ ],
	[ 'in a transaction block', 'postgres', $node->safe_psql('postgres', 'SELECT current_user'),
		"BEGIN; DROP DATABASE $db", qr/cannot run inside a transaction block/ ],
	[ 'the current database', $db, 'db_owner', "DROP DATABASE $db",
		qr/cannot drop the currently open database/ ],
	# (16 and later say SUPERUSER)
	[ 'pg_terminate_backend of the worker by pg_signal_backend', 'postgres', 'signaller',
		"SELECT pg_terminate_backend($pid)", qr/superuser/i ],
	[ 'pg_cancel_backend of the worker by pg_signal_backend', 'postgres', 'signaller',
		"SELECT pg_cancel_backend($pid)", qr/superuser/i ],
	[ 'pg_terminate_backend of the launcher by pg_signal_backend', 'postgres', 'signaller',
		"SELECT pg_terminate_backend($launcher)", qr/superuser/i ],
);
my $i = 0;
for my $case (@refused)
{
	my ($what, $in_db, $role, $sql, $expect) = @$case;
	my $prefix = 'q' . $i++ . 'x';
	in_flight($prefix, 3, 2);
	my $offset = -s $node->logfile;
	my ($out, $err);
	$node->psql($in_db, $sql, stdout => \$out, stderr => \$err,
		extra_params => [ '-U', $role ]);
	like($err, $expect, "$what: as PostgreSQL answers");
	undisturbed($what, $prefix, 3, $offset);
}
is($node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'celloattr launcher'"),
	$launcher, 'the launcher is the same');

# A drop allowed through, stopped while it waits for the worker to leave:
# the worker is held (SIGSTOP) so that the wait lasts.
sub cancelled_drop
{
	my ($what, $prefix, $how, $expect) = @_;
	# short stalls: the answers wait in the socket while the worker is held
	in_flight($prefix, 3, 1);
	my $offset = -s $node->logfile;
	kill 'STOP', $pid;
	my ($out, $err) = ('', '');
	my $drop = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres'),
			($how eq 'timeout' ? ('-c', 'SET statement_timeout = \'1s\'') : ()),
			'-c', "DROP DATABASE $db" ],
		'>', \$out, '2>', \$err);
	my $dropper = 0;
	for (1 .. 100)
	{
		$dropper = $node->safe_psql('postgres', qq{
			SELECT pid FROM pg_stat_activity
			 WHERE query LIKE '%DROP DATABASE $db' AND pid <> pg_backend_pid()});
		last if $dropper;
		sleep 0.05;
	}
	sleep 0.3;						# in the wait for the worker
	$node->safe_psql('postgres', "SELECT pg_${how}_backend($dropper)")
	  if $how ne 'timeout';
	$drop->finish;
	like($err, $expect, "$what: the drop ended");
	is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = '$db'"),
		1, "$what: the database is there");
	kill 'CONT', $pid;
	sleep 1;						# time to leave, if it still thought it should
	undisturbed($what, $prefix, 3, $offset);
}

cancelled_drop('statement_timeout during the wait', 'ct', 'timeout',
	qr/canceling statement due to statement timeout/);
cancelled_drop('pg_cancel_backend of the dropper during the wait', 'cc', 'cancel',
	qr/canceling statement due to user request/);
cancelled_drop('the dropper terminated during the wait', 'cx', 'terminate',
	qr/terminating connection due to administrator command/);

# The owner (no superuser) drops it: the worker leaves, the drop goes
# through, and a new worker serves the database once it is back.
$node->safe_psql('postgres', 'CREATE DATABASE scratch');
my ($rc, $out, $err) = $node->psql('scratch', "DROP DATABASE $db",
	extra_params => [ '-U', 'db_owner' ]);
is($rc, 0, "the owner's DROP DATABASE went through") or diag $err;
$node->safe_psql('postgres', "CREATE DATABASE $db");
$node->safe_psql($db, 'CREATE EXTENSION celloattr');
isnt(wait_for_new_worker($node, $pid), $pid, 'a new worker serves the new database');
fake_reset();
fake_seed(stripe_seed('n', 1));
is(attribute_one($node, 'n', 1), 'done', 'and carries out a repair');
is(worker_crashes($node), 0, 'the worker never crashed');

$node->stop;
done_testing();
