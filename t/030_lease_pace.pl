# t/030_lease_pace.pl: a step that needs more requests than its provider's
# pace allows within a lease ends, instead of starting over for ever.
#
# Chargebee's events API has no customer filter.  The payments inside the
# window come from the shared event index, a page per run (t/021, t/022),
# but for a customer created before the window the chargebee_payments step
# still lists the site's older payments from the customer's creation on,
# filtered on the customer, for the support report, in one run.  Here 13
# pages of them at one request a second (chargebee_rate_limit = 60) need
# 13 s, and the lease is 5 s: each lease ends while the step waits for a
# pacing token, after it has sent requests.  Before, such an expiry gave
# the attempt back, so the step started over from its first page again and
# again, for as long as the server ran, never done nor failed, taking all
# of Chargebee's rate.  Now it uses an attempt: after max_attempts it
# fails, with last_error naming the pace and the lease.  A step that
# waited for its pace without sending anything still uses none.
#
# The same 13 pages inside the window, under the same lease, end done: the
# index's listing reads one page per run of the step, without using an
# attempt, so no lease holds more than one of them.

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
# created before the window, so its older payments are listed
push @{ $seed->{chargebee}{customers} }, { id => 'cb_p1', email => 'p1@example.com', age_days => 60 };
for my $i (1 .. 1250)
{
	push @{ $seed->{chargebee}{events} }, { id => "ev_o$i", event_type => 'payment_succeeded',
		age_days => 40, content => { customer => { id => "other_$i" },
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
# (and the one page of the index's listing of the window, which is empty)
cmp_ok($pages, '<=', 3 * 7 + 1, "requests sent: at most a lease's worth per attempt ($pages)");

# the same pages inside the window: the index's listing, a page per run
$seed = guest_seed();
push @{ $seed->{chargebee}{customers} }, { id => 'cb_p2', email => 'p2@example.com', age_days => 4 };
for my $i (1 .. 1250)
{
	push @{ $seed->{chargebee}{events} }, { id => "ev_w$i", event_type => 'payment_succeeded',
		age_days => 2, content => { customer => { id => "other_$i" },
			transaction => { customer_id => "other_$i" } } };
}
fake_reset();
fake_seed($seed);
# the fake's account is new: the index starts over (its trigger resets what it covers)
$node->safe_psql($db, 'TRUNCATE celloattr.payment_events');
my $id2 = $node->safe_psql($db,
	q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-p2', 'chargebee', customer_id => 'cb_p2')});
ok(wait_all_final($node, 90), 'the repair over a window of 13 pages ended');
($state, $attempts) = split /\|/, $node->safe_psql($db, qq{
	SELECT state, attempts FROM celloattr.jobs
	 WHERE attribution_id = $id2 AND kind = 'chargebee_payments'});
is($state, 'done', 'a window of 13 pages under the same lease: the index read it, the step is done');
cmp_ok($attempts, '<=', 1, 'without using more than one attempt');
is($node->safe_psql($db, q{SELECT pages, listing_from IS NULL AND covered_until IS NOT NULL
	 FROM celloattr.event_sweeps WHERE provider = 'chargebee'}),
	'13|t', 'one listing of 13 pages, complete');
is($node->safe_psql($db, q{SELECT count(*) FROM celloattr.payment_events WHERE provider = 'chargebee'}),
	'1250', 'every payment of the window indexed');
check_guest($node, $pid, 'lease and pace');

$node->stop;
done_testing();
