# t/011_upgrade.pl: an upgraded installation equals a fresh one, and the
# work queued before the upgrade finishes after it.
#
# The databases hold nothing but the extension.  One database installs celloattr 1.0, queues repairs with the worker paused
# and runs ALTER EXTENSION celloattr UPDATE; another installs the current
# version fresh.  The schemas are compared through pg_dump --binary-upgrade
# (the only mode that dumps an extension's member objects one by one: tables,
# columns in order, indexes, constraints, functions, triggers, grants,
# comments), with the OIDs it pins removed, and through the extension's
# configuration tables (what a plain pg_dump keeps the data of).  Before the
# update, the library of the new version refuses to run steps on the old
# objects; on objects of a version it does not know, it refuses to queue.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
use Time::HiRes;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('upgrade', "celloattr.paused = on\n");
my $db = $CelloattrTest::DB;

my $default = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'celloattr'});
my @versions = split /\n/, $node->safe_psql('postgres',
	q{SELECT version FROM pg_available_extension_versions
	   WHERE name = 'celloattr' ORDER BY string_to_array(version, '.')::int[]});
ok(scalar(@versions) >= 2, "versions installable: @versions");
is($versions[-1], $default, 'the default version is the newest one');

# The worker's warnings about the SQL version since the log's offset.
sub version_warnings
{
	my ($offset, $version) = @_;
	my $log = slurp_file($node->logfile, $offset);
	my @lines = $log =~ /(WARNING:  celloattr worker is waiting: the extension's SQL objects are at version \Q$version\E[^\n]*)/g;
	return scalar(@lines);
}

# Waits up to 30 s for the worker's warning about the version.
sub wait_log_count
{
	my ($offset, $version) = @_;
	for (1 .. 150)
	{
		return 1 if version_warnings($offset, $version) > 0;
		Time::HiRes::sleep(0.2);
	}
	return 0;
}

# The database the worker serves upgrades with work queued in it: the
# library of the new version meets the objects of the old one (a binary
# upgraded before ALTER EXTENSION UPDATE).  The functions queue, with a
# warning; the worker, unpaused, claims nothing, says so once and stays.
my $offset = -s $node->logfile;
my $pid = worker_pid($node);
$node->safe_psql($db, 'DROP EXTENSION celloattr');
$node->safe_psql($db, "CREATE EXTENSION celloattr VERSION '$versions[0]'");
fake_reset();
fake_seed(stripe_seed('up', 3));
my $stderr;
$node->psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-up' || i, 'stripe',
                                                  customer_id => 'cus_up' || i)
                     FROM generate_series(1, 3) i},
	stderr => \$stderr, on_error_die => 1);
like($stderr, qr/WARNING:  the SQL objects of celloattr are at version \Q$versions[0]\E, and this library runs version \Q$default\E.*HINT:  Run ALTER EXTENSION celloattr UPDATE\./s,
	"queueing on the objects of $versions[0] warns that the worker waits for the update");
is(scalar(() = $stderr =~ /WARNING/g), 1, 'once per transaction');

$node->append_conf('postgresql.conf', "celloattr.paused = off\n");
$node->reload;
ok(wait_log_count($offset, $versions[0]),
	"the worker says it waits for the objects of $versions[0] to be updated");
like(slurp_file($node->logfile, $offset), qr/HINT:  Run ALTER EXTENSION celloattr UPDATE in database "\Q$db\E"\./,
	'with the command that ends the wait');
sleep 2;    # ten poll intervals
is(version_warnings($offset, $versions[0]), 1, 'said once, not every round');
is(worker_pid($node), $pid, 'the worker stays (it does not exit and restart)');
is($node->safe_psql($db, q{SELECT string_agg(DISTINCT state, ',') FROM celloattr.jobs}),
	'queued', 'nothing was claimed');
is(scalar(@{ fake_requests('stripe') }), 0, 'nothing was sent');
$node->append_conf('postgresql.conf', "celloattr.paused = on\n");
$node->reload;

$node->safe_psql($db, 'ALTER EXTENSION celloattr UPDATE');
is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'celloattr'}),
	$default, "updated from $versions[0] to $default");

$node->safe_psql('postgres', 'CREATE DATABASE celloattr_fresh');
$node->safe_psql('celloattr_fresh', 'CREATE EXTENSION celloattr');

# pg_dump --binary-upgrade, less what differs between any two databases:
# the OIDs, relfilenodes and transaction ids it pins.
sub normalised_dump
{
	my ($dbname) = @_;
	my ($stdout, $stderr);
	IPC::Run::run(
		[ 'pg_dump', '--schema-only', '--binary-upgrade', '--no-owner',
		  '-d', $node->connstr($dbname) ],
		'>', \$stdout, '2>', \$stderr)
	  or die "pg_dump $dbname: $stderr";
	my @keep;
	for my $line (split /\n/, $stdout)
	{
		next if $line =~ /binary_upgrade_set_next_|binary_upgrade_set_record_init_privs/;
		# where the sequences stand is data, not schema
		next if $line =~ /^SELECT pg_catalog.setval\(/;
		# a column added with a default to a table holding rows keeps that
		# default for the old rows in pg_attribute (a "fast default"): how
		# they are stored, not the schema
		next if $line =~ /^-- set missing value\.$|binary_upgrade_set_missing_value\(/;
		next if $line =~ /^SET relfrozenxid = |^WHERE oid = '[0-9]+';$/;
		next if $line =~ /^-- (Dumped|Name:|TOC entry|Data for)/;
		next if $line =~ /^--$/ || $line =~ /^\s*$/;
		next if $line =~ /\\(un)?restrict /;	# pg_dump's per-run random key
		# the OIDs of the configuration tables (compared by name below)
		$line =~ s/binary_upgrade_create_empty_extension\((.*), '\{[0-9,]*\}'/binary_upgrade_create_empty_extension($1, '{OIDS}'/;
		push @keep, $line;
	}
	return join("\n", @keep) . "\n";
}

my $upgraded = normalised_dump($db);
my $fresh = normalised_dump('celloattr_fresh');
ok(length($fresh) > 1000, 'the dump of a fresh install holds the schema');
if ($upgraded eq $fresh)
{
	pass('pg_dump of the upgraded schema equals a fresh install');
}
else
{
	my $dir = PostgreSQL::Test::Utils::tempdir();
	open my $a, '>', "$dir/upgraded.sql" or die;
	print $a $upgraded;
	close $a;
	open my $b, '>', "$dir/fresh.sql" or die;
	print $b $fresh;
	close $b;
	my $diff = `diff -u $dir/fresh.sql $dir/upgraded.sql`;
	fail('pg_dump of the upgraded schema equals a fresh install');
	diag($diff);
}

# What a plain pg_dump keeps the data of, and objects outside the schema
# (roles' grants on it live in the dump above; the roles are the cluster's).
my $config = q{
	SELECT string_agg(c::regclass::text || coalesce(' WHERE ' || w, ''), E'\n' ORDER BY c::regclass::text)
	  FROM pg_extension e,
	       unnest(e.extconfig, e.extcondition) AS x(c, w)
	 WHERE e.extname = 'celloattr'};
is($node->safe_psql($db, $config), $node->safe_psql('celloattr_fresh', $config),
	'the same tables are kept by pg_dump');
my $members = q{
	SELECT string_agg(pg_describe_object(classid, objid, 0), E'\n' ORDER BY pg_describe_object(classid, objid, 0))
	  FROM pg_depend d
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
	   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'celloattr')};
is($node->safe_psql($db, $members), $node->safe_psql('celloattr_fresh', $members),
	'the same member objects');

# The work queued before the upgrade finishes after it, once.
$node->append_conf('postgresql.conf', "celloattr.paused = off\n");
$node->reload;
ok(wait_all_final($node, 60), 'the work queued before the upgrade finished');
check_stripe_effects($node, 'up', 3);

# Objects of a version this library does not know (a binary downgraded
# below the objects, here made by editing the catalog): the functions
# refuse, the worker leaves queued work alone and says so once, and carries
# it out once library and objects match again.
fake_seed(stripe_seed('down', 2));
$node->append_conf('postgresql.conf', "celloattr.paused = on\n");
$node->reload;
queue_stripe($node, 'down', 2);
$offset = -s $node->logfile;
$pid = worker_pid($node);
$node->safe_psql($db, q{UPDATE pg_extension SET extversion = '9.9' WHERE extname = 'celloattr'});
my $requests = scalar(@{ fake_requests('stripe') });
$node->append_conf('postgresql.conf', "celloattr.paused = off\n");
$node->reload;
my ($rc) = $node->psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-none', 'stripe')},
	stderr => \$stderr);
isnt($rc, 0, 'a function refuses objects of an unknown version');
like($stderr, qr/ERROR:  the SQL objects of celloattr are at version 9\.9, which this library \(version \Q$default\E\) does not know.*HINT:  Run ALTER EXTENSION celloattr UPDATE if this library is the newer one/s,
	'and says why and what to do');
ok(wait_log_count($offset, '9.9'), 'the worker says it does not know version 9.9');
sleep 2;
is(version_warnings($offset, '9.9'), 1, 'said once');
is(worker_pid($node), $pid, 'the worker stays');
is(scalar(@{ fake_requests('stripe') }), $requests, 'nothing was sent');
$node->safe_psql($db, qq{UPDATE pg_extension SET extversion = '$default' WHERE extname = 'celloattr'});
ok(wait_all_final($node, 60), 'the work waiting on the unknown version finished once it matched');
check_stripe_effects($node, 'down', 2);

# An answer that arrives while the objects are at a version the library
# does not know is kept, and written once they match: its step is neither
# left running nor sent again.
fake_seed(stripe_seed('held', 1));
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/customers/cus_held1',
	action => 'stall', seconds => 1.5, count => 1 });
queue_stripe($node, 'held', 1);
$node->poll_query_until($db, q{SELECT count(*) = 1 FROM celloattr.jobs j
	JOIN celloattr.attributions a ON a.id = j.attribution_id
	WHERE a.new_user_id = 'user-held1' AND j.kind = 'stripe_customer' AND j.state = 'running'})
  or die 'the customer step never ran';
$node->safe_psql($db, q{UPDATE pg_extension SET extversion = '9.9' WHERE extname = 'celloattr'});
sleep 4;	# the stalled answer came meanwhile
$node->safe_psql($db, qq{UPDATE pg_extension SET extversion = '$default' WHERE extname = 'celloattr'});
ok(wait_all_final($node, 60), 'an answer held over an unknown version: the repair finished');
is($node->safe_psql($db, q{SELECT j.attempts || ' ' || j.interruptions FROM celloattr.jobs j
	JOIN celloattr.attributions a ON a.id = j.attribution_id
	WHERE a.new_user_id = 'user-held1' AND j.kind = 'stripe_customer'}), '1 0',
	'an answer held over an unknown version: written, not run again');
check_stripe_effects($node, 'held', 1);

done_testing();
