# t/043_databases_races.pl: the launcher's state machine under adverse timing.
#
# A worker whose start-up look at pg_extension fails (a lock it may not
# wait for) must not be taken for one that found no extension: the
# database would stay unserved until a reload.  A database dropped from
# celloattr.database and named again while its worker still finishes its
# transfers must have its next worker stopped too when it is dropped from
# the list again.  A listed database that refuses connections gets no worker
# started (and failing) every second.  A list serves only what it names,
# also once every name in it was found.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $node = celloattr_node('races',
	"celloattr.database = '*'\ncelloattr.max_workers = 4\n");
my $db = $CelloattrTest::DB;


fake_reset();
fake_seed(stripe_seed('r', 3));

# --- 1. the start-up look fails on an error: not "no extension"
my $pid = workers($node)->{$db};
ok($pid, 'a worker serves the database');
# hold pg_extension while the worker starts again: its look errors after
# lock_timeout (1 s), more than once
$node->safe_psql($db, qq{
	BEGIN;
	LOCK pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE;
	SELECT pg_terminate_backend($pid);
	SELECT pg_sleep(4);
	COMMIT});
my $w = wait_workers($node, sub { $_[0]{$db} }, 20);
ok($w->{$db}, 'a failed look at pg_extension: the worker starts again once it can look');

# --- 2. unlisted, listed again while its worker finishes, unlisted again
$pid = workers($node)->{$db};
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/customers/cus_r1',
	action => 'stall', seconds => 4 });
my $r1 = $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-r1', 'stripe',
	customer_id => 'cus_r1')});
my $deadline = time + 20;
sleep 0.1 while !(grep { $_->{path} =~ m{^/v1/customers/cus_r1} && $_->{method} eq 'POST' }
	@{ fake_requests('stripe') }) && time < $deadline;
$node->append_conf('postgresql.conf', "celloattr.database = 'postgres'\n");
$node->reload;
sleep 1;    # the launcher asked it to leave; it waits for its transfer
ok(workers($node)->{$db}, 'unlisted: the worker finishes its transfer first');
$node->append_conf('postgresql.conf', "celloattr.database = '*'\n");
$node->reload;
$w = wait_workers($node, sub { $_[0]{$db} && $_[0]{$db} != $pid }, 30);
ok($w->{$db} && $w->{$db} != $pid, 'listed again: a new worker once the old one left');
fake('POST', '/_control/faults/clear');
is($node->safe_psql($db, "SELECT celloattr.wait($r1, '60 s')"), 'done', 'its repair is done');
$node->append_conf('postgresql.conf', "celloattr.database = 'postgres'\n");
$node->reload;
$w = wait_workers($node, sub { !$_[0]{$db} }, 15);
ok(!$w->{$db}, 'unlisted again: that worker leaves too');

# --- 3. a listed database that refuses connections
$node->safe_psql('postgres', 'CREATE DATABASE db_closed');
$node->safe_psql('db_closed', 'CREATE EXTENSION celloattr');
$node->safe_psql('postgres', 'ALTER DATABASE db_closed ALLOW_CONNECTIONS false');
my $offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "celloattr.database = '$db, db_closed'\n");
$node->reload;
$w = wait_workers($node, sub { $_[0]{$db} });
ok($w->{$db}, 'listed: the database is served again');
sleep 4;
my $log = substr(slurp_file($node->logfile), $offset);
my $refused = () = $log =~ /database "db_closed" is not currently accepting connections/g;
ok($refused <= 1, "no worker started again and again where connections are refused ($refused refusals)");
$node->safe_psql('postgres', 'ALTER DATABASE db_closed ALLOW_CONNECTIONS true');
$w = wait_workers($node, sub { $_[0]{db_closed} }, 20);
ok($w->{db_closed}, 'allowed again: a worker serves it');

# --- 4. a list whose names all exist: the databases after them in
# pg_database are not served as if it were '*'
$node->append_conf('postgresql.conf', "celloattr.database = 'postgres'\n");
$node->reload;
$w = wait_workers($node, sub { !$_[0]{$db} && !$_[0]{db_closed} }, 15);
ok(!$w->{$db} && !$w->{db_closed}, "a list naming only postgres: no worker in $db nor db_closed");

is(worker_crashes($node), 0, 'no worker crashed');
$node->stop;
done_testing();
