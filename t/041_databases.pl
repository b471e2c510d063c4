# t/041_databases.pl: one cluster, several databases.
#
# With celloattr.database = '*' the launcher finds the databases itself: a
# worker runs in each where the extension is created, none where it is not
# (a template, or a database without it), starts within seconds of CREATE
# EXTENSION, leaves on DROP EXTENSION, and no more than celloattr.max_workers
# run (a database beyond the cap waits, said in the log, and is served once
# a slot is free).  Each database's worker carries out that database's
# repairs with that database's settings (ALTER DATABASE ... SET, taken on a
# reload by a worker that starts afresh, the others untouched), and shows
# only itself in that database's worker_status.  A reload that lists the
# databases instead stops the workers of the others and names a missing one.
# RENAME, SET TABLESPACE, CREATE DATABASE ... TEMPLATE and DROP DATABASE of
# a served database go through: its worker leaves first, and comes back.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $node = celloattr_node('databases',
	"celloattr.database = '*'\ncelloattr.max_workers = 3\n");
my $db = $CelloattrTest::DB;

sub names { join(' ', sort keys %{ $_[0] }) }

sub attribute_db
{
	my ($in, $prefix, $i) = @_;
	return $node->safe_psql($in, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-$prefix$i',
		                                 'stripe', customer_id => 'cus_$prefix$i')});
}

sub state_of
{
	my ($in, $id) = @_;
	return $node->safe_psql($in, "SELECT state FROM celloattr.attributions WHERE id = $id");
}

fake_reset();
my $seed = stripe_seed('m', 9);
push @{ $seed->{stripe}{webhook_endpoints} }, { id => 'we_db_a' };
fake_seed($seed);

# --- discovery
$node->safe_psql('postgres', 'CREATE DATABASE db_plain');
$node->safe_psql('template1', 'CREATE EXTENSION celloattr');
$node->safe_psql('postgres', 'CREATE DATABASE db_a');
$node->safe_psql('db_a', 'DROP EXTENSION celloattr');    # from template1
$node->safe_psql('template1', 'DROP EXTENSION celloattr');
$node->safe_psql('db_a', 'CREATE EXTENSION celloattr');
my $w = wait_workers($node, sub { $_[0]{db_a} });
ok($w->{db_a}, 'CREATE EXTENSION: a worker starts in that database');
# the launcher looked at db_plain and template1 (a CREATE EXTENSION makes it
# look at every database without a worker again): no worker stays there
sleep 2;
is(names(workers($node)), "$db db_a", 'no worker in a database without the extension, nor in a template');

$node->safe_psql('postgres', 'CREATE DATABASE db_b');
$node->safe_psql('db_b', 'CREATE EXTENSION celloattr');
$w = wait_workers($node, sub { $_[0]{db_b} });
is(names($w), "$db db_a db_b", 'a worker per database with the extension');

# --- the cap
my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE DATABASE db_c');
$node->safe_psql('db_c', 'CREATE EXTENSION celloattr');
ok( $node->wait_for_log(
		qr/celloattr launcher: all 3 worker slots are taken; database "db_c" waits for one/, $offset),
	'beyond celloattr.max_workers a database waits, and the log says which');
my $c1 = attribute_db('db_c', 'm', 1);
sleep 1;
is(state_of('db_c', $c1), 'queued', 'its repairs wait');
is(names(workers($node)), "$db db_a db_b", 'three workers, no more');

$node->safe_psql('db_b', 'DROP EXTENSION celloattr');
$w = wait_workers($node, sub { $_[0]{db_c} && !$_[0]{db_b} });
is(names($w), "$db db_a db_c", 'DROP EXTENSION: its worker leaves, and the waiting database gets the slot');
is($node->safe_psql('db_c', "SELECT celloattr.wait($c1, '60 s')"), 'done',
	'the waiting repair is carried out');

# --- each database's worker does its own database's work
my $t1 = attribute_db($db, 'm', 2);
my $a1 = attribute_db('db_a', 'm', 3);
is($node->safe_psql($db, "SELECT celloattr.wait($t1, '60 s')"), 'done', "a repair in $db");
is($node->safe_psql('db_a', "SELECT celloattr.wait($a1, '60 s')"), 'done', 'a repair in db_a at the same time');
is( $node->safe_psql('db_a',
		'SELECT string_agg(DISTINCT database || pid, \',\') FROM celloattr.worker_status'),
	'db_a' . workers($node)->{db_a},
	"worker_status shows the database's own worker, none of the others");

# --- per-database settings: ALTER DATABASE ... SET, then a reload
my $pid_db = workers($node)->{$db};
my $pid_a = workers($node)->{db_a};
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	ALTER DATABASE db_a SET celloattr.stripe_webhook_endpoint = 'we_db_a';
	SELECT pg_reload_conf()});
ok( $node->wait_for_log(
		qr/celloattr worker restarting: the celloattr settings of this database changed/, $offset),
	'a reload after ALTER DATABASE SET: that database\'s worker starts afresh');
$w = wait_workers($node, sub { $_[0]{db_a} && $_[0]{db_a} != $pid_a });
isnt($w->{db_a}, $pid_a, 'db_a has a new worker');
is($w->{$db}, $pid_db, 'the worker of the other database did not restart');
my $a2 = attribute_db('db_a', 'm', 4);
my $t2 = attribute_db($db, 'm', 5);
$node->safe_psql('db_a', "SELECT celloattr.wait($a2, '60 s')");
$node->safe_psql($db, "SELECT celloattr.wait($t2, '60 s')");
my @resent = map { $_->{body} =~ /webhook_endpoint=(\w+)/ ? "$1" : () }
  grep { $_->{method} eq 'POST' && $_->{path} =~ m{^/v1/events/evt_m[45]/retry$} }
  @{ fake_requests('stripe') };
is(join(' ', sort @resent), 'we_cello_test we_db_a',
	"each database's events went to its own webhook endpoint");

$node->safe_psql('postgres', q{
	ALTER DATABASE db_a SET celloattr.paused = on;
	SELECT pg_reload_conf()});
$node->poll_query_until('db_a', "SELECT state = 'paused' FROM celloattr.worker_status LIMIT 1")
  or diag 'db_a never paused';
my $a3 = attribute_db('db_a', 'm', 6);
my $t3 = attribute_db($db, 'm', 7);
is($node->safe_psql($db, "SELECT celloattr.wait($t3, '60 s')"), 'done',
	"paused in db_a only: $db goes on");
is(state_of('db_a', $a3), 'queued', 'db_a waits');
$node->safe_psql('postgres', q{
	ALTER DATABASE db_a RESET celloattr.paused;
	SELECT pg_reload_conf()});
is($node->safe_psql('db_a', "SELECT celloattr.wait($a3, '60 s')"), 'done',
	'RESET and a reload: db_a goes on');

# --- a list instead of '*', on a reload
$offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "celloattr.database = '$db, db_c, db_missing'\n");
$node->reload;
$w = wait_workers($node, sub { !$_[0]{db_a} });
is(names($w), "$db db_c", 'listed: the worker of a database no longer named leaves');
ok( $node->wait_for_log(
		qr/celloattr launcher: database "db_missing" named in celloattr.database does not exist; waiting for it/,
		$offset),
	'a listed database that does not exist is named in the log');
my $a4 = attribute_db('db_a', 'm', 8);
sleep 1;
is(state_of('db_a', $a4), 'queued', 'nothing runs in a database the list leaves out');
$node->safe_psql('postgres', 'CREATE DATABASE db_missing');
$node->safe_psql('db_missing', 'CREATE EXTENSION celloattr');
$w = wait_workers($node, sub { $_[0]{db_missing} });
is(names($w), "$db db_c db_missing", 'created, the listed database gets its worker');

# --- commands that need a database without sessions ask its worker to leave
my $ts = PostgreSQL::Test::Utils::tempdir;
$node->safe_psql('postgres', "CREATE TABLESPACE ts_db LOCATION '$ts'");
for my $case (
	[ 'RENAME TO', 'ALTER DATABASE db_c RENAME TO db_c2', "$db db_missing" ],
	[ 'RENAME back', 'ALTER DATABASE db_c2 RENAME TO db_c', "$db db_c db_missing" ],
	[ 'SET TABLESPACE', 'ALTER DATABASE db_c SET TABLESPACE ts_db', "$db db_c db_missing" ],
	[ 'CREATE DATABASE ... TEMPLATE', 'CREATE DATABASE db_copy TEMPLATE db_c',
		"$db db_c db_missing" ])
{
	my ($what, $sql, $after) = @$case;
	my ($rc, $timed_out, $err) = psql_within($node, 'postgres', $sql, 20);
	ok(!$timed_out && $rc == 0, "$what of a served database goes through") or diag $err;
	$w = wait_workers($node, sub { names($_[0]) eq $after });
	is(names($w), $after, "$what: then served as celloattr.database says");
}
my $c2 = attribute_db('db_c', 'm', 2);
is($node->safe_psql('db_c', "SELECT celloattr.wait($c2, '60 s')"), 'done',
	'the moved database is served again');
$node->safe_psql('postgres', 'DROP DATABASE db_copy');

# --- DROP DATABASE of a served database, while the others go on
my ($rc, $timed_out, $err) = psql_within($node, 'postgres', 'DROP DATABASE db_c', 20);
ok(!$timed_out && $rc == 0, 'DROP DATABASE of a served database') or diag $err;
$w = wait_workers($node, sub { !$_[0]{db_c} });
is(names($w), "$db db_missing", 'its worker is gone, the others stay');
is(attribute_one($node, 'm', 9), 'done', 'and they carry on');

# --- ALTER ROLE ALL SET applies to every session, the workers' too
my %before = %{ workers($node) };
$node->safe_psql('postgres', q{
	ALTER ROLE ALL SET celloattr.paused = on;
	SELECT pg_reload_conf()});
$w = wait_workers($node, sub {
	my ($now) = @_;
	!grep { !$now->{$_} || $now->{$_} == $before{$_} } keys %before });
is(names($w), names(\%before), 'ALTER ROLE ALL SET and a reload: every worker starts afresh');
ok($node->poll_query_until($db, "SELECT bool_and(state = 'paused') FROM celloattr.worker_status"),
	'and takes the setting');
$node->safe_psql('postgres', q{
	ALTER ROLE ALL RESET celloattr.paused;
	SELECT pg_reload_conf()});
ok($node->poll_query_until($db, "SELECT bool_and(state <> 'paused') FROM celloattr.worker_status"),
	'RESET and a reload: it goes on');

is(worker_crashes($node), 0, 'no worker crashed');
unlike(slurp_file($node->logfile), qr/ERROR:.*celloattr|celloattr.*ERROR/,
	'no celloattr error in the log');
$node->stop;
done_testing();
