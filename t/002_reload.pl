# t/002_reload.pl: a SIGHUP with changed keys (a new secrets file) and URLs
# takes effect in the running worker, also with requests in flight, without
# a restart.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $OLD_KEY = test_secrets()->{stripe_secret_key};
my $NEW_KEY = 'sk_test_rotated_celloattr_key_4711';

my $node = celloattr_node('reload');
my $db = $CelloattrTest::DB;

fake_reset();
my $seed = stripe_seed('r', 3);
$seed->{stripe}{api_keys} = [ $OLD_KEY, $NEW_KEY ];
fake_seed($seed);

# What the fake saw of a customer's requests: "host bearer-key" lines.
sub seen
{
	my ($customer) = @_;
	my %lines;
	for my $r (@{ fake_requests('stripe') })
	{
		next unless ($r->{path} . $r->{query}) =~ /\Q$customer\E\b/;
		(my $key = $r->{headers}{authorization}) =~ s/^Bearer //;
		$lines{"$r->{headers}{host} $key"} = 1;
	}
	return join(',', sort keys %lines);
}

my $pid = worker_pid($node);
my $port = PostgreSQL::Test::Utils::slurp_file($ENV{FAKE_API_PORT_FILE});
chomp $port;

is(attribute_one($node, 'r', 1), 'done', 'first repair done with the old settings');
is(seen('cus_r1'), "127.0.0.1:$port $OLD_KEY", 'the old key and URL were used');

# a stalled request is in flight while the settings change
fake_fault({ provider => 'stripe', method => 'POST', path_regex => '^/v1/customers/cus_r2',
	action => 'stall', seconds => 1.5 });
my $r2 = $node->safe_psql($db,
	"SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-r2', 'stripe', customer_id => 'cus_r2')");
$node->poll_query_until($db,
	"SELECT count(*) > 0 FROM celloattr.http_log WHERE attribution_id = $r2")
  or note 'no request of r2 recorded before the reload';
my $secrets = slurp_file($node->data_dir . '/celloattr.secrets');
write_node_secrets($node, $secrets =~ s/\Q$OLD_KEY\E/$NEW_KEY/r);
$node->safe_psql('postgres', qq{
	ALTER SYSTEM SET celloattr.stripe_api_url = 'http://localhost:$port/stripe';
	SELECT pg_reload_conf();});
is($node->safe_psql($db, "SELECT celloattr.wait($r2, '60 s')"), 'done',
	'the repair in flight during the reload completed');
# give the worker's SIGHUP a moment, then repair another customer
sleep 0.5;
is(attribute_one($node, 'r', 3), 'done', 'a repair after the reload done');
is(seen('cus_r3'), "localhost:$port $NEW_KEY", 'the new key and URL were used');
is(worker_pid($node), $pid, 'by the same worker: no restart');
is($node->safe_psql($db, qq{
		SELECT count(*) > 0 AND bool_and(url LIKE 'http://localhost:$port/stripe/%')
		  FROM celloattr.http_log
		 WHERE attribution_id = (SELECT id FROM celloattr.attributions WHERE new_user_id = 'user-r3')}),
	't', 'the log shows the new URL');
is(worker_crashes($node), 0, 'the worker never crashed');

$node->stop;
done_testing();
