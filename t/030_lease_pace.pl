# t/030_lease_pace.pl: a step that needs more requests than its provider's
# pace allows within a lease ends, instead of starting over for ever.
#
# Chargebee's events API has no customer filter, so the chargebee_payments
# step pages through every payment of the site inside the window.  Here 13
# pages at one request a second (chargebee_rate_limit = 60) need 13 s, and
# the lease is 5 s: each lease ends while the step waits for a pacing
# token, after it has sent requests.  Before, such an expiry gave the
# attempt back, so the step started over from its first page again and
# again, for as long as the server ran, never done nor failed, taking all
# of Chargebee's rate.  Now it uses an attempt: after max_attempts it
# fails, with last_error naming the pace and the lease.  A step that
# waited for its pace without sending anything still uses none.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('lease_pace', qq{
celloattr.max_attempts = 3
celloattr.lease = 5
celloattr.request_timeout = 3s
celloattr.chargebee_rate_limit = 60
});
my $db = $CelloattrTest::DB;

my $seed = guest_seed();
push @{ $seed->{chargebee}{customers} }, { id => 'cb_p1', email => 'p1@example.com', age_days => 4 };
for my $i (1 .. 1250)
{
	push @{ $seed->{chargebee}{events} }, { id => "ev_o$i", event_type => 'payment_succeeded',
		age_days => 2, content => { customer => { id => "other_$i" },
			transaction => { customer_id => "other_$i" } } };
}
fake_reset();
fake_seed($seed);

my $pid = worker_pid($node);
my $id = $node->safe_psql($db,
	q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-p1', 'chargebee', customer_id => 'cb_p1')});
ok(wait_all_final($node, 90), 'the repair ended');
my ($state, $attempts, $error) = split /\|/, $node->safe_psql($db, qq{
	SELECT state, attempts, last_error FROM celloattr.jobs
	 WHERE attribution_id = $id AND kind = 'chargebee_payments'});
is($state, 'failed', 'the paging step failed');
is($attempts, 3, 'after max_attempts attempts');
like($error, qr/lease.*after \d+ requests paced at celloattr\.chargebee_rate_limit/,
	'last_error names the pace and the lease');
my $pages = $node->safe_psql($db, qq{
	SELECT count(*) FROM celloattr.http_log h JOIN celloattr.jobs j ON j.id = h.job_id
	 WHERE j.attribution_id = $id AND j.kind = 'chargebee_payments' AND h.status IS NOT NULL});
cmp_ok($pages, '<=', 3 * 7, "requests sent: at most a lease's worth per attempt ($pages)");
check_guest($node, $pid, 'lease and pace');

$node->stop;
done_testing();
