# t/011_upgrade.pl: an upgraded installation equals a fresh one, and the
# work queued before the upgrade finishes after it.
#
# The databases hold nothing but the extension.  One database installs celloattr 1.0, queues repairs with the worker paused
# and runs ALTER EXTENSION celloattr UPDATE; another installs the current
# version fresh.  The schemas are compared through pg_dump --binary-upgrade
# (the only mode that dumps an extension's member objects one by one: tables,
# columns in order, indexes, constraints, functions, triggers, grants,
# comments), with the OIDs it pins removed, and through the extension's
# configuration tables (what a plain pg_dump keeps the data of).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
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

# The database the worker serves upgrades with work queued in it.
$node->safe_psql($db, 'DROP EXTENSION celloattr');
$node->safe_psql($db, "CREATE EXTENSION celloattr VERSION '$versions[0]'");
fake_reset();
fake_seed(stripe_seed('up', 3));
queue_stripe($node, 'up', 3);
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

done_testing();
