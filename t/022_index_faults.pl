# t/022_index_faults.pl: the shared event index under faults.
#
# Two bulk statements at once share one listing of the window; in its
# middle a 429 and a 500, an event paid (of a customer attributed while the
# listing runs), and a kill -9 of the worker.  The listing goes on from its
# last page each time (never again from page 1), and every event that must
# be resent is resent exactly once: none missed, none twice because it was
# listed twice.  Chargebee's listing meets a 429 and a 503 the same way.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
use JSON::PP;
use POSIX qw(ceil);
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $N = 24;
my $NOISE = 3000;
my $CB_N = 10;
my $CB_NOISE = 1200;

my $node = celloattr_node('indexfaults', "celloattr.stripe_rate_limit = 0\ncelloattr.chargebee_rate_limit = 0\n"
	  . "celloattr.cello_rate_limit = 0\ncelloattr.backoff_base = '200ms'\n");
my $db = $CelloattrTest::DB;

my $seed = guest_seed();
my $s = $seed->{stripe};
for my $i (1 .. $N, 'late')
{
	push @{ $s->{customers} }, { id => "cus_f$i", age_days => 60, metadata => {} };
	next if $i eq 'late';
	push @{ $s->{invoices} }, { id => "in_f$i", customer => "cus_f$i", status => 'paid', age_days => 3 };
	push @{ $s->{events} }, { id => "evt_f$i", type => 'invoice.paid', invoice => "in_f$i", age_days => 3 };
}
push @{ $s->{events} }, map {
	{ id => sprintf('evt_noise%05d', $_), type => 'invoice.paid', age_days => 1 + $_ % 28,
	  data => { object => { id => "in_noise$_", object => 'invoice', customer => "cus_other$_" } } }
} 1 .. $NOISE;
my $c = $seed->{chargebee};
for my $i (1 .. $CB_N)
{
	push @{ $c->{customers} }, { id => "cb_f$i", age_days => 20 };
	push @{ $c->{events} }, { id => "ev_f$i", event_type => 'payment_succeeded', age_days => 2,
		content => { customer => { id => "cb_f$i" }, transaction => { customer_id => "cb_f$i" } } };
}
push @{ $c->{events} }, map {
	{ id => sprintf('ev_noise%05d', $_), event_type => 'payment_succeeded', age_days => 1 + $_ % 28,
	  content => { customer => { id => "cb_other$_" } } }
} 1 .. $CB_NOISE;
fake_reset();
fake_seed($seed);

# Every page of the events lists is slow, so that the faults land
# mid-listing; a fault added (the fake applies the first that matches) goes
# before the stalls.
sub fault_before_stalls
{
	my ($fault) = @_;
	fake('POST', '/_control/faults/clear');
	fake_fault($fault) if $fault;
	fake_fault({ provider => 'stripe', method => 'GET', path_regex => '^/v1/events$',
		action => 'stall', seconds => 0.2, count => 0 });
	fake_fault({ provider => 'chargebee', method => 'GET', path_regex => '^/events$',
		action => 'stall', seconds => 0.2, count => 0 });
}
fault_before_stalls();

# pages read of the listing in progress, or -1 when none is
sub listing_pages
{
	my ($provider) = @_;
	my ($rc, $out) = $node->psql($db, "SELECT CASE WHEN listing_from IS NULL THEN -1 ELSE pages END"
		  . " FROM celloattr.event_sweeps WHERE provider = '$provider'");
	return $rc == 0 && $out ne '' ? $out : -1;
}

sub wait_pages
{
	my ($provider, $n) = @_;
	for (1 .. 600)
	{
		return 1 if listing_pages($provider) >= $n;
		sleep 0.05;
	}
	return 0;
}

# 1. two bulk statements at once
my @sessions = map {
	my $from = 1 + ($_ - 1) * $N / 2;
	my $to = $_ * $N / 2;
	IPC::Run::start([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-c', qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-f' || i, 'stripe', customer_id => 'cus_f' || i)
		  FROM generate_series($from, $to) i} ], '>', \my $out, '2>', \my $err)
} 1, 2;
$_->finish or die 'a bulk statement failed' for @sessions;

# 2. a 429 and a 500 in the middle of the listing
ok(wait_pages('stripe', 5), 'the listing of the window is under way');
fault_before_stalls({ provider => 'stripe', method => 'GET', path_regex => '^/v1/events$',
	action => 'rate_limit', retry_after => 1, count => 1 });
ok(wait_pages('stripe', 9), 'it went on after a 429');
fault_before_stalls({ provider => 'stripe', method => 'GET', path_regex => '^/v1/events$',
	action => 'status', status => 500, count => 1 });
ok(wait_pages('stripe', 13), 'and after a 500');

# 3. an event paid while the listing runs, of a customer attributed meanwhile
fake_seed({ stripe => {
	invoices => [ { id => 'in_flate', customer => 'cus_flate', status => 'paid', age_days => 0 } ],
	events => [ { id => 'evt_flate', type => 'invoice.paid', invoice => 'in_flate', age_days => 0 } ] } });
$node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-flate', 'stripe',
	customer_id => 'cus_flate')});

# 4. kill -9 of the worker in the middle of the listing
ok(wait_pages('stripe', 18), 'the listing went on');
my $killed_at = fake_requests('stripe')->[-1]{seq};
my $pages_at_kill = listing_pages('stripe');
kill 'KILL', worker_pid($node);
wait_for_new_worker($node, 0);
cmp_ok($pages_at_kill, '>', 0, "the kill landed in the middle of the listing (page $pages_at_kill)");

ok(wait_all_final($node, 180), 'every repair ended');
is($node->safe_psql($db, q{SELECT state || ' ' || count(*) FROM celloattr.attributions
	WHERE gateway = 'stripe' GROUP BY state}), 'done ' . ($N + 1), 'every Stripe repair done');

# the listing of the window: started once, went on from its last page
my $window_pages = ceil(($NOISE + $N) / 100);
my @pages = grep { $_->{method} eq 'GET' && $_->{path} eq '/v1/events' } @{ fake_requests('stripe') };
my %by_gte;
$by_gte{ $_->{query_params}{'created[gte]'}[0] }++ for @pages;
my ($full) = sort { $by_gte{$b} <=> $by_gte{$a} } keys %by_gte;
my @full = grep { $_->{query_params}{'created[gte]'}[0] eq $full } @pages;
is(scalar(grep { !$_->{query_params}{starting_after} } @full), 1,
	'the listing of the window started once: the faults and the kill never sent it back to page 1');
my ($after_kill) = grep { $_->{seq} > $killed_at } @full;
ok(defined $after_kill && $after_kill->{query_params}{starting_after},
	'after the kill the listing went on from a page of its own');
my %cursor_ok;
$cursor_ok{ $_->{query_params}{starting_after}[0] // '' } = 1 for grep { ($_->{status} // 0) == 200 } @full;
my @faulted = grep { ($_->{status} // 0) != 200 } @full;
is(scalar @faulted, 2, 'the 429 and the 500 hit pages of the listing');
is(scalar(grep { !$cursor_ok{ $_->{query_params}{starting_after}[0] // '' } } @faulted), 0,
	'each faulted page was read again from its own cursor');
cmp_ok(scalar @full, '<=', $window_pages + 2 + 3,
	'pages read again: only the faulted ones and those of the kill (' . scalar(@full) . " for $window_pages)");

# exactly once
my %resent;
$resent{ $_->{event_id} }++ for grep { $_->{provider} eq 'stripe' } @{ fake_deliveries() };
my @wrong = grep { ($resent{$_} // 0) != 1 } (map { "evt_f$_" } 1 .. $N), 'evt_flate';
is("@wrong", '', 'every event of the repaired customers resent exactly once, the one paid mid-listing too');
is(scalar(grep { /^evt_noise/ } keys %resent), 0, 'no other customer\'s event resent');
my %updated;
$updated{ $_->{data}{object}{id} }++
  for grep { $_->{type} eq 'customer.updated' } @{ fake_state('stripe')->{events} };
@wrong = grep { ($updated{"cus_f$_"} // 0) != 1 } 1 .. $N, 'late';
is("@wrong", '', 'every customer updated exactly once');
is($node->safe_psql($db, q{SELECT count(*) || ' ' || count(DISTINCT event_id) FROM celloattr.payment_events
	WHERE provider = 'stripe'}), ($NOISE + $N + 1) . ' ' . ($NOISE + $N + 1),
	'the index holds every event once, the one paid mid-listing too');

# 5. Chargebee: a 429 and a 503 in the middle of its listing
$node->safe_psql($db, qq{
	SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-cbf' || i, 'chargebee', customer_id => 'cb_f' || i)
	  FROM generate_series(1, $CB_N) i});
ok(wait_pages('chargebee', 3), 'Chargebee: the listing of the window is under way');
fault_before_stalls({ provider => 'chargebee', method => 'GET', path_regex => '^/events$',
	action => 'rate_limit', retry_after => 1, count => 1 });
ok(wait_pages('chargebee', 6), 'Chargebee: it went on after a 429');
fault_before_stalls({ provider => 'chargebee', method => 'GET', path_regex => '^/events$',
	action => 'status', status => 503, count => 1 });
ok(wait_all_final($node, 180), 'Chargebee: every repair ended');
is($node->safe_psql($db, q{SELECT count(*) FROM celloattr.attributions WHERE gateway = 'chargebee' AND state = 'done'}),
	$CB_N, 'Chargebee: every repair done');
my @cb = grep { $_->{path} eq '/events' } @{ fake_requests('chargebee') };
my %cb_gte;
$cb_gte{ $_->{query_params}{'occurred_at[after]'}[0] }++ for @cb;
my ($cb_full) = sort { $cb_gte{$b} <=> $cb_gte{$a} } keys %cb_gte;
is(scalar(grep { $_->{query_params}{'occurred_at[after]'}[0] eq $cb_full && !$_->{query_params}{offset} } @cb), 1,
	'Chargebee: the listing of the window started once');
is(scalar(grep { ($_->{status} // 0) != 200 } @cb), 2, 'Chargebee: the 429 and the 503 hit pages of the listing');
my $redelivered = chargebee_redeliveries();
@wrong = grep { ($redelivered->{"ev_f$_"} // 0) != 1 } 1 .. $CB_N;
is("@wrong", '', 'Chargebee: every payment re-delivered exactly once');

is(worker_crashes($node), 1, 'the worker died only of the kill');
is(unfinished_steps($node), '', 'every step in a final state');
$node->stop;
done_testing();
