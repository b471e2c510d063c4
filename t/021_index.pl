# t/021_index.pl: what a bulk repair costs at the providers, with the
# shared event index (src/worker/eventindex.c).
#
# Neither events API filters on a customer: without the index every
# payment step paged through all the account's payment events in the
# window.  With it, the window is listed once for everyone (then only
# what is newer), so a bulk repair costs a handful of requests per user
# plus about one listing of the window:
#	- Stripe: at most 5 requests per user + 2 listings of the window;
#	- Chargebee: at most 4 per user + 2 listings;
#	- a single repair afterwards reads at most 3 pages of events;
#	- one window start for all the pages of a listing;
#	- Stripe's search stays under its own 20 reads a second whatever
#	  stripe_rate_limit says (here: pacing off);
# and every event is resent (re-delivered) exactly once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use JSON::PP;
use POSIX qw(ceil);
use PostgreSQL::Test::Utils;
use Test::More;

my $USERS = 40;				# Stripe users repaired at once
my $CB_USERS = 20;			# Chargebee users
my $NOISE = 2000;			# other customers' payment events in the window
my $CB_NOISE = 1000;

# pacing off: the figures are requests, not time
my $node = celloattr_node('index', "celloattr.stripe_rate_limit = 0\ncelloattr.chargebee_rate_limit = 0\n"
	  . "celloattr.cello_rate_limit = 0\n");
my $db = $CelloattrTest::DB;

# Stripe: each user's customer was created before the window (so its old
# invoices are listed) and paid twice inside it; others paid $NOISE times.
my $seed = guest_seed();
my $s = $seed->{stripe};
for my $i (1 .. $USERS + 1)
{
	push @{ $s->{customers} }, { id => "cus_b$i", email => "b$i\@example.com", age_days => 60, metadata => {} };
	for my $k (1, 2)
	{
		push @{ $s->{invoices} }, { id => "in_b${i}_$k", customer => "cus_b$i", status => 'paid',
			age_days => 3 * $k };
		push @{ $s->{events} }, { id => "evt_b${i}_$k", type => 'invoice.paid', invoice => "in_b${i}_$k",
			age_days => 3 * $k };
	}
}
push @{ $s->{events} }, map {
	{ id => sprintf('evt_noise%05d', $_), type => 'invoice.paid', age_days => 1 + $_ % 28,
	  data => { object => { id => "in_noise$_", object => 'invoice', customer => "cus_other$_" } } }
} 1 .. $NOISE;

# Chargebee: customers created inside the window, one payment each
my $c = $seed->{chargebee};
for my $i (1 .. $CB_USERS)
{
	push @{ $c->{customers} }, { id => "cb_b$i", email => "cb$i\@example.com", age_days => 20 };
	push @{ $c->{events} }, { id => "ev_b$i", event_type => 'payment_succeeded', age_days => 2,
		content => { customer => { id => "cb_b$i" },
			transaction => { id => "txn_b$i", customer_id => "cb_b$i", amount => 4900, currency_code => 'EUR' },
			invoice => { id => "inv_b$i", customer_id => "cb_b$i" } } };
}
push @{ $c->{events} }, map {
	{ id => sprintf('ev_noise%05d', $_), event_type => 'payment_succeeded', age_days => 1 + $_ % 28,
	  content => { customer => { id => "cb_other$_" }, transaction => { customer_id => "cb_other$_" } } }
} 1 .. $CB_NOISE;
fake_reset();
fake_seed($seed);

my $window_pages = ceil(($NOISE + 2 * ($USERS + 1)) / 100);
my $cb_window_pages = ceil(($CB_NOISE + $CB_USERS) / 100);

# The created[gte] of each page of the events listing, and its cursor.
sub event_pages
{
	my ($since) = @_;
	return [ map { { gte => ($_->{query_params}{'created[gte]'} // [''])->[0],
					 after => ($_->{query_params}{starting_after} // [undef])->[0] } }
		  grep { $_->{method} eq 'GET' && $_->{path} eq '/v1/events' && $_->{seq} > ($since // 0) }
		  @{ fake_requests('stripe') } ];
}

# 1. A DBA's repair of $USERS Stripe users in one statement
$node->safe_psql($db, qq{
	SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-b' || i, 'stripe', customer_id => 'cus_b' || i)
	  FROM generate_series(1, $USERS) i});
ok(wait_all_final($node, 180), 'Stripe bulk repair: every attribution ended');
is($node->safe_psql($db, q{SELECT state || ' ' || count(*) FROM celloattr.attributions GROUP BY state}),
	"done $USERS", 'Stripe bulk repair: all done');

my $requests = fake_requests('stripe');
my $pages = event_pages();
my $total = scalar @$requests;
my $per_user = ($total - @$pages) / $USERS;
note sprintf('Stripe: %d requests for %d users, %d of them event pages (%d in a listing of the window), %.2f per user beside them',
	$total, $USERS, scalar @$pages, $window_pages, $per_user);
cmp_ok($total, '<=', 5 * $USERS + 2 * $window_pages,
	"Stripe bulk repair: at most 5 requests per user + 2 listings of the window ($total)");
cmp_ok(scalar @$pages, '<=', 2 * $window_pages, 'Stripe bulk repair: the window listed at most twice');
cmp_ok(scalar @$pages, '>=', $window_pages, 'Stripe bulk repair: and listed whole');

# one window start for every page of a listing: the pages of the whole
# window (the listing that starts without a cursor) share theirs
my %by_gte;
$by_gte{ $_->{gte} }++ for @$pages;
my ($full) = sort { $by_gte{$b} <=> $by_gte{$a} } keys %by_gte;
is($by_gte{$full}, $window_pages, 'one window start for all the pages of the listing of the window');
is(scalar(grep { $_->{gte} eq $full && !defined $_->{after} } @$pages), 1,
	'the listing of the window started once');

my %resent;
$resent{ $_->{event_id} }++ for @{ fake_deliveries() };
my @wrong = grep { ($resent{$_} // 0) != 1 } map { ("evt_b${_}_1", "evt_b${_}_2") } 1 .. $USERS;
is("@wrong", '', 'Stripe bulk repair: every event of the users resent exactly once');
is(scalar(grep { /^evt_noise/ } keys %resent), 0, 'Stripe bulk repair: no other customer\'s event resent');
is($node->safe_psql($db, q{SELECT count(*) FROM celloattr.payment_events WHERE provider = 'stripe'}),
	$NOISE + 2 * ($USERS + 1), 'the index holds each event of the window once');

# 2. One more repair afterwards: it reads only what is newer
my $last = scalar @$requests ? $requests->[-1]{seq} : 0;
sleep 1.5;		# past the pause between listings
my $one = $node->safe_psql($db, "SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-b"
	  . ($USERS + 1) . "', 'stripe', customer_id => 'cus_b" . ($USERS + 1) . "')");
is($node->safe_psql($db, "SELECT celloattr.wait($one, '60 s')"), 'done', 'a single repair afterwards: done');
my $single = event_pages($last);
cmp_ok(scalar @$single, '<=', 3, 'a single repair afterwards reads at most 3 pages of events ('
	  . scalar(@$single) . ')');
cmp_ok(scalar @$single, '>=', 1, 'and reads what is newer than the index');
%resent = ();
$resent{ $_->{event_id} }++ for @{ fake_deliveries() };
is(($resent{ 'evt_b' . ($USERS + 1) . '_1' } // 0) . ' ' . ($resent{ 'evt_b' . ($USERS + 1) . '_2' } // 0),
	'1 1', 'the single repair resent its events once each');

# 3. Chargebee: $CB_USERS users in one statement
$node->safe_psql($db, qq{
	SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-cb' || i, 'chargebee', customer_id => 'cb_b' || i)
	  FROM generate_series(1, $CB_USERS) i});
ok(wait_all_final($node, 180), 'Chargebee bulk repair: every attribution ended');
is($node->safe_psql($db, q{SELECT count(*) FROM celloattr.attributions WHERE gateway = 'chargebee' AND state = 'done'}),
	$CB_USERS, 'Chargebee bulk repair: all done');
my $cb = fake_requests('chargebee');
my $cb_pages = grep { $_->{path} eq '/events' } @$cb;
note sprintf('Chargebee: %d requests for %d users, %d of them event pages (%d in a listing of the window)',
	scalar @$cb, $CB_USERS, $cb_pages, $cb_window_pages);
cmp_ok(scalar @$cb, '<=', 4 * $CB_USERS + 2 * $cb_window_pages,
	'Chargebee bulk repair: at most 4 requests per user + 2 listings of the window (' . scalar(@$cb) . ')');
my %offset_gte;
$offset_gte{ ($_->{query_params}{'occurred_at[after]'} // [''])->[0] }++ for grep { $_->{path} eq '/events' } @$cb;
is((sort { $b <=> $a } values %offset_gte)[0], $cb_window_pages,
	'Chargebee: one window start for all the pages of the listing of the window');
my $redelivered = chargebee_redeliveries();
@wrong = grep { ($redelivered->{"ev_b$_"} // 0) != 1 } 1 .. $CB_USERS;
is("@wrong", '', 'Chargebee bulk repair: every payment re-delivered exactly once');
is(scalar(grep { /^ev_noise/ } keys %$redelivered), 0, 'Chargebee bulk repair: no other customer\'s payment');

# 4. Stripe's search: 18 a second at most, with pacing off
my $searches_from = fake_requests('stripe')->[-1]{seq};
$node->safe_psql($db, q{
	SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s' || i, 'stripe', dry_run => true)
	  FROM generate_series(1, 60) i});
ok(wait_all_final($node, 120), 'searches: every attribution ended');
my @at = sort { $a <=> $b } map { $_->{at} }
  grep { $_->{seq} > $searches_from && $_->{path} eq '/v1/customers/search' } @{ fake_requests('stripe') };
is(scalar @at, 60, 'searches: one per user');
my $most = 0;
for my $i (0 .. $#at)
{
	my $n = grep { $_ >= $at[$i] && $_ < $at[$i] + 1 } @at;
	$most = $n if $n > $most;
}
cmp_ok($most, '<=', 20, "searches: at most 20 in any second, with stripe_rate_limit = 0 ($most)");
cmp_ok($at[-1] - $at[0], '>=', 2.5, sprintf('searches: 60 of them took %.1f s', $at[-1] - $at[0]));

is(worker_crashes($node), 0, 'the worker never crashed');
$node->stop;
done_testing();
