# t/004_faults.pl: every kind of provider fault ends where it should.
#
# Transient faults (5xx, transport errors, timeouts, cut or unreadable
# answers) are retried within celloattr.max_attempts and then fail with the
# reason kept; 429 is waited out without using an attempt; a final 4xx or
# an answer of the wrong shape fails at once with the provider's message.
# The worker never crashes.  Operators can retry and cancel.  A burst is
# paced below celloattr.stripe_rate_limit, measured at the fake.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $MAX_ATTEMPTS = 3;
my $node = celloattr_node('faults', qq{
celloattr.max_attempts = $MAX_ATTEMPTS
celloattr.request_timeout = 1s
celloattr.backoff_max = 1s
});
my $db = $CelloattrTest::DB;
my $pid = worker_pid($node);

# name, fault on the step's first request (GET of the customer), and where
# the step must end: state, attempts, a pattern of its last_error
my @cases = (
	[ '500 once', { action => 'status', status => 500 }, 'done', 2 ],
	[ '502 once', { action => 'status', status => 502 }, 'done', 2 ],
	[ '503 always', { action => 'status', status => 503, count => 0 },
		'failed', $MAX_ATTEMPTS, qr/gave up after 3 attempts: stripe answered HTTP 503/ ],
	[ '429 with Retry-After, twice', { action => 'rate_limit', retry_after => 1, count => 2 },
		'done', 1 ],
	[ '429 without Retry-After', { action => 'rate_limit' }, 'done', 1 ],
	[ 'timeout (stall past request_timeout)', { action => 'stall', seconds => 2.5 }, 'done', 2 ],
	[ 'timeouts always', { action => 'stall', seconds => 1.5, count => 0 },
		'failed', $MAX_ATTEMPTS, qr/gave up after 3 attempts: .*Timeout was reached/ ],
	[ 'stalled body', { action => 'stall_body', seconds => 2 }, 'done', 2 ],
	# libcurl itself sends a request again, once, when the kept-alive
	# connection it reused turns out closed before any answer: then the
	# step needed one attempt of ours, else two
	[ 'dropped connection', { action => 'drop' }, 'done', '[12]' ],
	[ 'malformed JSON', { action => 'malformed' }, 'done', 2 ],
	[ 'malformed JSON always', { action => 'malformed', count => 0 },
		'failed', $MAX_ATTEMPTS, qr/with a body that is not JSON/ ],
	[ 'huge JSON over the 16 MB cap', { action => 'huge', bytes => 17 * 1024 * 1024 },
		'done', 2 ],
	[ 'huge JSON (5 MB) of the wrong shape', { action => 'huge', bytes => 5 * 1024 * 1024 },
		'failed', 1, qr/customer without an id/ ],
	# what json-c alone would take, and write back as it came into jsonb
	# (which refuses it) or into a request: the answer is not JSON
	[ 'JSON only json-c takes (01, NaN, a 30-digit integer)',
		{ action => 'shape', body_hex => unpack('H*',
			'{"id":"cus_lenient","object":"customer","balance":01,"x":NaN,"n":123456789012345678901234567890}') },
		'done', 2 ],
	[ 'JSON only json-c takes, always', { action => 'shape', count => 0, body_hex => unpack('H*',
			'{"id":"cus_lenient","object":"customer","metadata":{},"trailing":[1,],}') },
		'failed', $MAX_ATTEMPTS, qr/with a body that is not JSON/ ],
	[ '200 of an unexpected shape', { action => 'shape' },
		'failed', 1, qr/Stripe answered a customer without an id/ ],
	[ '400', { action => 'status', status => 400,
			body => { error => { type => 'invalid_request_error', message => 'Bad thing: x' } } },
		'failed', 1, qr/stripe answered HTTP 400: Bad thing: x/ ],
	[ '500 with Stripe-Should-Retry: false',
		{ action => 'status', status => 500, headers => { 'Stripe-Should-Retry' => 'false' } },
		'failed', 1, qr/asked not to retry/ ],
);

fake_reset();
fake_seed(stripe_seed('f', scalar @cases + 3));
my $i = 0;
my %ids;
for my $case (@cases)
{
	my ($name, $fault) = @$case;
	$i++;
	fake_fault({ provider => 'stripe', method => 'GET', path_regex => "^/v1/customers/cus_f$i\$",
		count => 1, %$fault });
	$ids{$name} = $node->safe_psql($db, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-f$i', 'stripe', customer_id => 'cus_f$i')});
}
ok(wait_all_final($node, 120), 'every faulted repair ended');

for my $case (@cases)
{
	my ($name, $fault, $state, $attempts, $error) = @$case;
	my ($got_state, $got_attempts, $got_error) = split /\|/, $node->safe_psql($db, qq{
		SELECT state, attempts, coalesce(last_error, '')
		  FROM celloattr.jobs WHERE attribution_id = $ids{$name} AND kind = 'stripe_customer'}), 3;
	like("$got_state $got_attempts", qr/^$state $attempts$/, "$name: step $state after $attempts attempt(s)");
	like($got_error, $error, "$name: reason kept") if $error;
	if ($state eq 'failed')
	{
		like($node->safe_psql($db, "SELECT state || ': ' || last_error FROM celloattr.attributions WHERE id = $ids{$name}"),
			qr/^failed: .+/, "$name: the attribution failed with the reason");
	}
}

# an old paid invoice whose line items are not a list goes to the support
# report (json-c aborted the worker, and with it the server, on it)
fake_seed({ stripe => {
	customers => [ { id => 'cus_nolines', metadata => {}, age_days => 60 } ],
	invoices => [ { id => 'in_nolines', customer => 'cus_nolines', status => 'paid', age_days => 40,
		lines => { object => 'list', data => 'not a list' } } ] } });
my $nolines = $node->safe_psql($db,
	"SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-nolines', 'stripe', customer_id => 'cus_nolines')");
is($node->safe_psql($db, "SELECT celloattr.wait($nolines, '30 s')"), 'needs_support',
	'an invoice without a list of line items: to the support report');
is(worker_pid($node), $pid, 'an invoice without a list of line items: the worker did not crash');

# a 429 is waited out for its Retry-After, twice, without using an attempt
cmp_ok($node->safe_psql($db, qq{
		SELECT extract(epoch FROM max(started_at) - min(started_at))
		  FROM celloattr.http_log WHERE attribution_id = $ids{'429 with Retry-After, twice'}
		   AND url LIKE '%/v1/customers/%' AND method = 'GET'}), '>=', 1.9,
	'429: Retry-After waited out twice');

# transport faults outside the fake: a host that does not resolve, a port
# nobody listens on
sub with_url
{
	my ($name, $url, $error) = @_;
	$i++;
	$node->safe_psql('postgres', qq{
		ALTER SYSTEM SET celloattr.stripe_api_url = '$url';
		SELECT pg_reload_conf();});
	sleep 0.5;
	my $state = attribute_one($node, 'f', $i);
	my ($attempts, $last) = split /\|/, $node->safe_psql($db, qq{
		SELECT j.attempts, j.last_error FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
		 WHERE a.new_user_id = 'user-f$i'});
	is("$state $attempts", "failed $MAX_ATTEMPTS", "$name: failed after $MAX_ATTEMPTS attempts");
	like($last, $error, "$name: reason kept");
}
with_url('DNS failure', 'http://nonexistent.invalid/stripe', qr/resolve/i);
with_url('refused connection', 'http://127.0.0.1:1/stripe', qr/connect/i);
$node->safe_psql('postgres', qq{
	ALTER SYSTEM RESET celloattr.stripe_api_url;
	SELECT pg_reload_conf();});
sleep 0.5;

cmp_ok($node->safe_psql($db, 'SELECT max(attempts) FROM celloattr.jobs'), '<=', $MAX_ATTEMPTS,
	'no step used more than max_attempts');

# operators: retry a failed repair, cancel a queued one
fake('POST', '/_control/faults/clear');
my $failed = $ids{'503 always'};
$node->safe_psql($db, "SELECT celloattr.retry($failed)");
is($node->safe_psql($db, "SELECT celloattr.wait($failed, '30 s')"), 'done', 'retry(): a failed repair done');

my $last = scalar @cases + 3;
fake_fault({ provider => 'stripe', method => 'GET', path_regex => "^/v1/customers/cus_f$last\$",
	action => 'status', status => 503, count => 0 });
$node->safe_psql($db, 'ALTER SYSTEM SET celloattr.backoff_max = 30; ALTER SYSTEM SET celloattr.backoff_base = 5000');
$node->reload;
my $c = $node->safe_psql($db, qq{
	SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-f$last', 'stripe', customer_id => 'cus_f$last')});
$node->poll_query_until($db, "SELECT attempts = 1 AND state = 'queued' FROM celloattr.jobs WHERE attribution_id = $c");
$node->safe_psql($db, "SELECT celloattr.cancel($c)");
my $before = scalar @{ fake_requests('stripe') };
$node->safe_psql($db, 'ALTER SYSTEM RESET celloattr.backoff_max; ALTER SYSTEM RESET celloattr.backoff_base');
$node->reload;
sleep 1.5;
is($node->safe_psql($db, "SELECT celloattr.wait($c, '1 s') || ' ' || string_agg(state, ',') FROM celloattr.jobs WHERE attribution_id = $c"),
	'cancelled cancelled', 'cancel(): a queued repair stopped');
is(scalar @{ fake_requests('stripe') }, $before, 'cancel(): nothing sent after it');
fake('POST', '/_control/faults/clear');

# pacing: a burst never exceeds the rate at the fake
my $RATE = 50;
my $BURST = $ENV{CELLOATTR_LONG_TESTS} ? 2000 : 100;
fake_reset();
my $seed = stripe_seed('p', $BURST);
delete $seed->{stripe}{$_} for qw(invoices events);
fake_seed($seed);
$node->safe_psql('postgres', "ALTER SYSTEM SET celloattr.stripe_rate_limit = $RATE; SELECT pg_reload_conf()");
sleep 0.5;
my $t0 = time;
queue_stripe($node, 'p', $BURST);
ok(wait_all_final($node, 60 + 4 * $BURST / $RATE), "pacing: $BURST repairs done");
my @at = sort { $a <=> $b } map { $_->{at} } @{ fake_requests('stripe') };
my ($max, $lo) = (0, 0);
for my $hi (0 .. $#at)
{
	$lo++ while $at[$hi] - $at[$lo] >= 1.0;
	$max = $hi - $lo + 1 if $hi - $lo + 1 > $max;
}
# the bucket lets a tenth of a second's worth through at once; two more
# for the jitter between the worker's clock and the fake's arrival times
my $allowed = $RATE + $RATE / 10 + 2;
cmp_ok($max, '<=', $allowed, "pacing: at most $allowed requests in any second at the fake: $max of " . scalar(@at));
cmp_ok($max, '>=', $RATE * 0.5, 'pacing: and not far below it');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET celloattr.stripe_rate_limit; SELECT pg_reload_conf()');

is(worker_pid($node), $pid, 'the same worker all along');
is(worker_crashes($node), 0, 'the worker never crashed');

$node->stop;
done_testing();
