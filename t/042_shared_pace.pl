# t/042_shared_pace.pl: pacing is per provider account, not per worker.
#
# One cluster, a worker in each of three databases (celloattr.database in
# its list form), each with its own Stripe key in the secrets file's
# sections: db_a and db_b with the same key, db_c with another.  At
# celloattr.stripe_rate_limit = 5 the two databases of the shared key take
# from one bucket in shared memory: their requests together go out at 5 a
# second, not 5 each.  Then a 429 that db_a gets holds db_b's requests too,
# and not db_c's.
#
# The machine is slow and noisy, so what is asserted are lower bounds on
# time (a bucket never lets requests through faster than its rate; a
# held bucket lets none through before the hold ends), and, for db_c, one
# generous deadline: its one request went out within the 429's 15 s.
#
# Needs the launcher that starts a worker per database of the list, and
# the secrets file's [database] sections.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $RATE = 5;
# the bucket holds a tenth of a second's worth, at least one token
my $BURST = 1;
# repairs queued in each database: some 30 requests each (a customer's
# read and update and an event's resend per repair, and the listing of
# events), so that the shared key's 60 need at least 12 s, where a bucket
# each would let them through in 6
my $N = 10;
# the 429's Retry-After, in seconds: db_c's deadline to send its request
my $HOLD = 15;
# what a request's arrival at the fake may lag behind the worker's taking
# its token (the first connection, a busy machine): spans are measured at
# the fake, the bucket acts in the worker
my $LAG = 1.0;

# the customers' prefix of each database, for the rates, then for the 429
my %db = (db_a => 'sa', db_b => 'sb', db_c => 'oc');
my %held = (db_a => 'ha', db_b => 'hb', db_c => 'hc');
my $shared_key = 'sk_test_celloattr_shared_account_0001';
my $other_key = 'sk_test_celloattr_other_account_0002';

my $conf = $ENV{CELLOATTR_TAP_CONF}
  or BAIL_OUT('CELLOATTR_TAP_CONF is not set: run the TAP tests through scripts/test');
my $node = PostgreSQL::Test::Cluster->new('shared_pace');
$node->init;
$node->append_conf('postgresql.conf', slurp_file($conf));
$node->append_conf('postgresql.conf', qq{
celloattr.database = 'db_a, db_b, db_c'
celloattr.secrets_file = 'celloattr.secrets'
celloattr.stripe_rate_limit = $RATE
celloattr.paused = on
});

# the suite's secrets are the defaults; each database's section sets its
# Stripe key
my $secrets = test_secrets();
my $text = join '', map { "$_ = '$secrets->{$_}'\n" }
  grep { $_ ne 'stripe_secret_key' } sort keys %$secrets;
$text .= "\n[db_a]\nstripe_secret_key = '$shared_key'\n";
$text .= "\n[db_b]\nstripe_secret_key = '$shared_key'\n";
$text .= "\n[db_c]\nstripe_secret_key = '$other_key'\n";
write_node_secrets($node, $text);

$node->start;
for my $d (sort keys %db)
{
	$node->safe_psql('postgres', "CREATE DATABASE $d");
	$node->safe_psql($d, 'CREATE EXTENSION celloattr');
}

# a worker in each database
my $deadline = time + 60;
my $workers = '';
while (time < $deadline)
{
	$workers = $node->safe_psql('postgres', q{
		SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_stat_activity
		 WHERE backend_type = 'celloattr worker'});
	last if $workers eq 'db_a db_b db_c';
	sleep 0.1;
}
is($workers, 'db_a db_b db_c', 'a worker in each database of the list');

fake_reset();
my $seed = { stripe => { customers => [], invoices => [], events => [],
		webhook_endpoints => [ { id => 'we_cello_test' } ],
		settings => { emit_noop_updates => JSON::PP::true } } };
for my $prefix ((sort values %db), sort values %held)
{
	my $s = stripe_seed($prefix, $N)->{stripe};
	push @{ $seed->{stripe}{$_} }, @{ $s->{$_} } for qw(customers invoices events);
}
fake_seed($seed);

sub wait_done
{
	my ($d, $n) = @_;
	my $left = -1;
	my $until = time + 300;
	while (time < $until)
	{
		$left = $node->safe_psql($d, q{
			SELECT count(*) FROM celloattr.attributions WHERE state IN ('queued', 'running')});
		last if $left eq '0';
		sleep 0.5;
	}
	is($left, '0', "$d: every repair ended");
	is($node->safe_psql($d, q{
			SELECT state || ' ' || count(*) FROM celloattr.attributions GROUP BY state}),
		"done $n", "$d: all $n repairs done");
}

# The fake's requests for a customer of the prefix, or its invoices or
# events: named in the path or the query (not as the cursor of a listing,
# which any database's may hold).
sub requests_of
{
	my ($prefix, $requests) = @_;
	return grep {
		my $query = ($_->{query} // '') =~ s/(?:starting_after|ending_before)=[^&]*//gr;
		"$_->{path} $query" =~ /(?:cus_|in_|evt_|user-)$prefix\d/
	} @$requests;
}

sub key_of
{
	my ($r) = @_;
	my ($key) = ($r->{headers}{authorization} // '') =~ /^Bearer (\S+)$/;
	return $key // '';
}

# queued while paused, so that the three workers start together
for my $d (sort keys %db)
{
	queue_stripe($node, $db{$d}, $N, $d);
}
$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = off; SELECT pg_reload_conf()');

wait_done($_, $N) for sort keys %db;

# The requests at the fake, by the key they carry and by the database
# whose customer they name.
my $requests = fake_requests('stripe');
my (%by_key, %by_db, %keys_of);
push @{ $by_key{ key_of($_) } }, $_ for @$requests;
for my $d (keys %db)
{
	$by_db{$d} = [ requests_of($db{$d}, $requests) ];
	$keys_of{$d}{ key_of($_) }++ for @{ $by_db{$d} };
}
my @shared = sort { $a <=> $b } map { $_->{at} } @{ $by_key{$shared_key} // [] };
my @other = sort { $a <=> $b } map { $_->{at} } @{ $by_key{$other_key} // [] };
is(join(' ', map { join(',', sort keys %{ $keys_of{$_} }) } sort keys %db),
	"$shared_key $shared_key $other_key", "each database's requests carry its section's key");

my ($a_first, $a_last) = (sort { $a <=> $b } map { $_->{at} } @{ $by_db{db_a} })[ 0, -1 ];
my $b_inside = grep { $_->{at} > $a_first && $_->{at} < $a_last } @{ $by_db{db_b} };
# else the databases took turns and did not compete for the budget at all
cmp_ok($b_inside, '>', 0, "db_b's requests went out while db_a's did ($b_inside of them)");

# A bucket of $RATE a second and $BURST tokens lets at most
# $BURST + $RATE * T requests through in any T seconds: the shared key's
# requests, both databases' together, span at least (n - $BURST) / $RATE
# seconds, where a bucket each would have let them through in half that.
my $n = scalar @shared;
my $span = $shared[-1] - $shared[0];
my $floor = ($n - $BURST) / $RATE - $LAG;
cmp_ok($span, '>=', $floor,
	sprintf('the shared key: %d requests over %.1f s, at most %d a second for both databases (at least %.1f s)',
		$n, $span, $RATE, $floor));
my $n_c = scalar @other;
my $span_c = $other[-1] - $other[0];
cmp_ok($span_c, '>=', ($n_c - $BURST) / $RATE - $LAG,
	sprintf("db_c's own key paced too: %d requests over %.1f s", $n_c, $span_c));

# A 429 that db_a gets closes the shared key's bucket for $HOLD s (its
# Retry-After).  Once db_a has read it (its http_log shows it), db_b's
# repair and db_c's are queued: db_b's first request waits for the hold to
# end, whatever the machine's speed, as db_a's bucket is db_b's; db_c's
# goes out at once, its bucket its own: a deadline of $HOLD s for one
# request.
fake_fault({ provider => 'stripe', method => 'GET', path_regex => "^/v1/customers/cus_$held{db_a}1\$",
		count => 1, action => 'rate_limit', retry_after => $HOLD });
my $before = scalar @$requests;
queue_stripe($node, $held{db_a}, 1, 'db_a');
my $seen = 0;
$deadline = time + 60;
while (time < $deadline)
{
	$seen = $node->safe_psql('db_a', 'SELECT count(*) FROM celloattr.http_log WHERE status = 429');
	last if $seen > 0;
	sleep 0.1;
}
cmp_ok($seen, '>', 0, 'db_a read its 429');
queue_stripe($node, $held{db_b}, 1, 'db_b');
queue_stripe($node, $held{db_c}, 1, 'db_c');
wait_done('db_a', $N + 1);
wait_done('db_b', $N + 1);
wait_done('db_c', $N + 1);

$requests = fake_requests('stripe');
my ($limited) = grep { ($_->{status} // 0) == 429 } @$requests[ $before .. $#$requests ];
ok($limited, 'the fake answered the 429');
my $t = $limited ? $limited->{at} : 0;
my ($b_first) = sort { $a <=> $b } map { $_->{at} } requests_of($held{db_b}, $requests);
my ($c_first) = sort { $a <=> $b } map { $_->{at} } requests_of($held{db_c}, $requests);
# db_a closed the bucket when it read the answer, after the fake sent it:
# until then + $HOLD, on the same clock as the fake's
cmp_ok($b_first // 0, '>=', $t + $HOLD,
	sprintf("db_b's first request waited out db_a's 429 (%.1f s after it)", ($b_first // 0) - $t));
cmp_ok($c_first // 9e99, '<', $t + $HOLD,
	sprintf("db_c's did not (%.1f s after it)", ($c_first // 0) - $t));

$node->stop;
done_testing();
