# t/020_restore.pl: a database dumped with queued and half-done work and
# restored resumes it there, once, under the same idempotency keys.
#
# pg_dump keeps the data of celloattr's tables; on restore, CREATE EXTENSION
# makes a new installation row and the data brings back the old one.  The
# old one must win (the queued steps' keys are built from it) and stay the
# only one (follow-up steps are built once per installation row).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $N = 4;
my $node = celloattr_node('restore');
my $db = $CelloattrTest::DB;

sub set_paused
{
	my ($on) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET celloattr.paused = $on");
	$node->reload;
}

# Half-done: customers updated and payments listed, every resend refused
# for now (a 503 before Stripe's idempotency layer: nothing took effect).
fake_reset();
fake_seed(stripe_seed('rs', $N));
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/events/.*/retry',
	action => 'status', status => 503, count => 0 });
queue_stripe($node, 'rs', $N);
$node->poll_query_until($db, qq{
	SELECT count(*) = $N FROM celloattr.jobs WHERE kind = 'stripe_resend' AND attempts >= 1})
  or die 'the resends were never tried';
set_paused('on');
$node->poll_query_until($db, q{SELECT count(*) = 0 FROM celloattr.jobs WHERE state = 'running'})
  or die 'steps still running after the pause';

my $install_id = $node->safe_psql($db, 'SELECT install_id FROM celloattr.installation');
my $keys_before = $node->safe_psql($db,
	'SELECT string_agg(idempotency_key, $$ $$ ORDER BY id) FROM celloattr.jobs');
is($node->safe_psql($db, q{SELECT count(*) FROM celloattr.jobs WHERE state = 'done'}),
	2 * $N, 'half done: customers and payments, not the resends');

my $dump = PostgreSQL::Test::Utils::tempdir() . '/celloattr.dump';
IPC::Run::run([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr($db) ])
  or die 'pg_dump failed';

$node->safe_psql('postgres', "DROP DATABASE $db");
$node->safe_psql('postgres', "CREATE DATABASE $db");
my ($out, $err);
IPC::Run::run([ 'pg_restore', '--exit-on-error', '-d', $node->connstr($db), $dump ],
	'>', \$out, '2>', \$err)
  or die "pg_restore failed: $err";

is($node->safe_psql($db, 'SELECT count(*) FROM celloattr.installation'), '1',
	'one installation row after the restore');
is($node->safe_psql($db, 'SELECT install_id FROM celloattr.installation'), $install_id,
	'the restored installation, not the one CREATE EXTENSION made');
is( $node->safe_psql($db,
		'SELECT string_agg(idempotency_key, $$ $$ ORDER BY id) FROM celloattr.jobs'),
	$keys_before, 'the same steps under the same keys');

# A second INSERT into installation leaves the oldest row too.
$node->safe_psql($db, 'INSERT INTO celloattr.installation DEFAULT VALUES');
is($node->safe_psql($db, 'SELECT install_id FROM celloattr.installation'), $install_id,
	'an installation row added later gives way to the first');

fake('POST', '/_control/faults/clear');
set_paused('off');
ok(wait_all_final($node, 60), 'the restored work finished');
check_stripe_effects($node, 'rs', $N);

# The keys the resends carried after the restore are the ones made before it.
my %sent;
for my $r (@{ fake_requests('stripe') })
{
	next unless $r->{method} eq 'POST' && $r->{path} =~ m{/retry$};
	$sent{ $r->{headers}{'idempotency-key'} } = 1;
}
my @foreign = grep { !/^ca-$install_id-/ } sort keys %sent;
is("@foreign", '', 'every resend carried a key of the restored installation');

# And a database restored under 1.0 (both rows already there) is mended
# by the upgrade.
$node->safe_psql('postgres', 'CREATE DATABASE restored_10');
$node->safe_psql('restored_10', q{CREATE EXTENSION celloattr VERSION '1.0'});
$node->safe_psql('restored_10', q{
	INSERT INTO celloattr.installation VALUES ('restoredold1', now() - interval '1 day')});
is($node->safe_psql('restored_10', 'SELECT count(*) FROM celloattr.installation'), '2',
	'1.0 keeps both rows');
$node->safe_psql('restored_10', 'ALTER EXTENSION celloattr UPDATE');
is($node->safe_psql('restored_10', 'SELECT install_id FROM celloattr.installation'),
	'restoredold1', 'the upgrade keeps the oldest row only');

$node->stop;
done_testing();
