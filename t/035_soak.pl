# t/035_soak.pl: every fault class at once, for a while, then count.
#
# Repairs on all three paths are queued in waves while the fake fails,
# throttles, stalls and cuts requests of every provider, applications hold
# attribution rows, a database owner's lock_timeout is planted, and the
# worker is killed (kill -9, which restarts the server's processes) or
# stopped (SIGTERM).  Then the faults stop, and an operator does what the
# README says for the steps set aside: mark_delivered() when the provider
# has the event, retry() when it has not.  At the end every repair is done
# and, at the fake, every change happened exactly once: "lost 0, doubled 0".
# CELLOATTR_LONG_TESTS=1 runs it for five minutes instead of one.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use List::Util qw(shuffle);
use Time::HiRes qw(sleep time);

my $SECONDS = $ENV{CELLOATTR_LONG_TESTS} ? 300 : 60;
my ($NS, $NC, $NA) = $ENV{CELLOATTR_LONG_TESTS} ? (150, 60, 60) : (45, 15, 15);
srand(20261206);

my $node = celloattr_node('soak', qq{
celloattr.max_attempts = 40
celloattr.request_timeout = 2s
celloattr.connect_timeout = 1s
celloattr.backoff_base = 50ms
celloattr.backoff_max = 1s
celloattr.max_in_flight = 8
});
my $db = $CelloattrTest::DB;
# a database owner's setting the worker must not take
$node->safe_psql('postgres', "ALTER DATABASE $db SET lock_timeout = '200ms'");

# --- the accounts
my $seed = guest_seed();
my $stripe = stripe_seed('sk', $NS)->{stripe};
$seed->{stripe}{$_} = $stripe->{$_} for qw(customers invoices events settings);
for my $i (1 .. $NC)
{
	push @{ $seed->{chargebee}{customers} }, { id => "cb_ck$i", email => "ck$i\@example.com", age_days => 40 };
	push @{ $seed->{chargebee}{events} }, {
		id => "ev_ck$i", event_type => 'payment_succeeded', age_days => 3,
		content => {
			customer => { id => "cb_ck$i" },
			transaction => { id => "txn_ck$i", customer_id => "cb_ck$i", amount => 4900,
				currency_code => 'EUR', status => 'success', type => 'payment' } } };
}
fake_reset();
fake_seed($seed);

# --- the work, queued in waves: [sql] per repair
my @work;
push @work, "SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-sk$_', 'stripe', customer_id => 'cus_sk$_')"
  for 1 .. $NS;
push @work, "SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-ck$_', 'chargebee', customer_id => 'cb_ck$_')"
  for 1 .. $NC;
push @work, "SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-ca$_', 'cello_api', email => 'ca$_\@example.com');"
  . " SELECT celloattr.cello_transaction('user-ca$_', 'inv_ca$_', 49, 'EUR', now() - interval '1 day', 'monthly', 'Team Plan')"
  for 1 .. $NA;
@work = shuffle(@work);

# SQL that must go through, whatever the worker's crashes do to sessions
sub run_surely
{
	my ($sql) = @_;
	for (1 .. 50)
	{
		my ($rc) = psql_may_fail($node, $db, $sql);
		return if $rc == 0;
		sleep 0.2;
	}
	die "could not run: $sql";
}

my @faults = (
	sub { { provider => $_[0], action => 'status', status => 503, count => 3 } },
	sub { { provider => $_[0], action => 'rate_limit', retry_after => 1, count => 2 } },
	sub { { provider => $_[0], action => 'stall', seconds => 3, count => 2 } },
	sub { { provider => $_[0], method => 'POST', action => 'stall_body', seconds => 3,
			apply => JSON::PP::true, count => 1 } },
	sub { { provider => $_[0], action => 'drop', count => 1 } },
);
my %done = (kills => 0, sigterms => 0, faults => 0, locks => 0);
my $pid = worker_pid($node);
my $start = time;
my $next_wave = 0;
while (time - $start < $SECONDS)
{
	if (@work && time >= $next_wave)
	{
		run_surely(shift @work) for 1 .. 6;
		$next_wave = time + 2;
	}
	my $blow = int(rand(10));
	if ($blow < 2)
	{
		$pid = worker_pid($node) || $pid;
		kill 'KILL', $pid;
		$done{kills}++;
		$pid = eval { wait_for_new_worker($node, $pid) } // 0;
	}
	elsif ($blow < 3)
	{
		$node->psql('postgres', "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE backend_type = 'celloattr worker'");
		$done{sigterms}++;
	}
	elsif ($blow < 7)
	{
		my $provider = (qw(stripe chargebee cello cello-webhook))[ int(rand(4)) ];
		fake_fault($faults[ int(rand(@faults)) ]->($provider));
		$done{faults}++;
	}
	else
	{
		# an application holds a repair's row in an open transaction
		my $held = eval {
			my $app = $node->background_psql($db, on_error_stop => 0);
			$app->query_safe('BEGIN; SELECT 1 FROM celloattr.attributions
				WHERE state IN (\'queued\', \'running\') ORDER BY random() LIMIT 1 FOR UPDATE');
			sleep 1;
			$app->query_safe('COMMIT');
			$app->quit;
			1;
		};
		$done{locks}++ if $held;
	}
	sleep 0.5 + rand(1.5);
}
run_surely($_) for @work;
fake('POST', '/_control/faults/clear');
note sprintf('soak: %d s, %d kills, %d SIGTERMs, %d faults, %d application locks',
	time - $start, @done{qw(kills sigterms faults locks)});

# --- the operator: steps set aside, each looked up at the fake
sub taken
{
	my ($kind, $user, $payload) = @_;
	if ($kind eq 'chargebee_redeliver')
	{
		(my $n = $user) =~ s/^user-ck//;
		return chargebee_redeliveries()->{"ev_ck$n"} // 0;
	}
	my $trigger = $kind eq 'cello_signup' ? 'new-signup' : 'invoice-paid';
	my $invoice = $kind eq 'cello_signup' ? '' : ($payload =~ /"invoice_id": "([^"]+)"/)[0];
	return cello_events()->{"$trigger $user $invoice"} // 0;
}

my %operator = (mark_delivered => 0, retry => 0);
for my $round (1 .. 5)
{
	wait_all_final($node, 180) or last;
	my @aside = split /\n/, $node->safe_psql($db, q{
		SELECT j.attribution_id || '|' || j.kind || '|' || a.new_user_id || '|' || coalesce(j.payload::text, '')
		  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
		 WHERE j.state = 'failed' ORDER BY j.id});
	last unless @aside;
	my %did;
	for my $row (@aside)
	{
		my ($id, $kind, $user, $payload) = split /\|/, $row, 4;
		next if $did{$id}++;
		my $keyless = $kind =~ /^(cello_signup|cello_transaction|chargebee_redeliver)$/;
		if ($keyless && taken($kind, $user, $payload))
		{
			$node->safe_psql($db, "SELECT celloattr.mark_delivered($id)");
			$operator{mark_delivered}++;
		}
		else
		{
			$node->safe_psql($db, "SELECT celloattr.retry($id)");
			$operator{retry}++;
		}
	}
}
note "soak: the operator marked $operator{mark_delivered} delivered and retried $operator{retry}";
ok(wait_all_final($node, 180), 'soak: every repair ended');
is($node->safe_psql($db, q{SELECT string_agg(state || ' ' || n, ', ' ORDER BY state)
	FROM (SELECT state, count(*) n FROM celloattr.attributions GROUP BY state) s}),
	'done ' . ($NS + $NC + $NA), 'soak: every repair done');
is(unfinished_steps($node), '', 'soak: every step in a final state');

# --- what the providers hold: each change once
my ($lost, $doubled) = (0, 0);
my @problems;
sub count_of
{
	my ($what, $n) = @_;
	$n //= 0;
	if ($n == 0) { $lost++; push @problems, "$what: never"; }
	elsif ($n > 1) { $doubled++; push @problems, "$what: $n times"; }
}

my %updated;
for my $e (@{ fake_state('stripe')->{events} })
{
	$updated{ $e->{data}{object}{id} }++
	  if $e->{type} eq 'customer.updated' && $e->{data}{object}{id} =~ /^cus_sk\d+$/;
}
my %resent;
$resent{ $_->{event_id} }++ for grep { $_->{provider} eq 'stripe' } @{ fake_deliveries() };
my %effects;
for my $r (@{ fake_requests('stripe') })
{
	next unless $r->{method} eq 'POST';
	my $status = $r->{applied_status} // $r->{status} // 0;
	next if $r->{idempotent_replay} || $status < 200 || $status > 299;
	$effects{ $r->{headers}{'idempotency-key'} // 'none' }++;
}
for my $i (1 .. $NS)
{
	count_of("Stripe customer cus_sk$i updated", $updated{"cus_sk$i"});
	count_of("Stripe event evt_sk$i resent", $resent{"evt_sk$i"});
}
for my $key (sort keys %effects)
{
	next unless $effects{$key} > 1;
	$doubled++;
	push @problems, "Stripe key $key took effect $effects{$key} times";
}
my $redeliveries = chargebee_redeliveries();
count_of("Chargebee event ev_ck$_ re-delivered", $redeliveries->{"ev_ck$_"}) for 1 .. $NC;
my $events = cello_events();
for my $i (1 .. $NA)
{
	count_of("Cello new-signup of user-ca$i", $events->{"new-signup user-ca$i "});
	count_of("Cello invoice-paid inv_ca$i", $events->{"invoice-paid user-ca$i inv_ca$i"});
}
diag($_) for @problems;
note "soak: lost $lost, doubled $doubled";
is($lost, 0, 'soak: lost 0');
is($doubled, 0, 'soak: doubled 0');

$node->stop;
done_testing();
