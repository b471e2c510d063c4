# t/040_failover.pl: a primary with a streaming standby dies hard in the
# middle of a bulk repair; the standby is promoted and its worker finishes
# every repair.  At the fake: nothing lost, nothing done twice, but what
# asynchronous replication can repeat, counted.
#
# Each run: a bulk repair on the three paths (Stripe, Chargebee, Cello API)
# is queued in one transaction while the fake holds answers of every kind
# back (a stall: the request takes effect, late); once they are all in
# flight, the primary is stopped hard and the standby promoted.  The new
# worker (started paused, to count what it found) claims the steps left
# running again: keyed ones are sent again under the same key (the
# provider replays its answer), keyless ones (Cello events, Chargebee
# redeliveries to Cello's webhook) are set aside, and an operator settles
# them as README says (mark_delivered() when the fake has the event,
# retry() when not).  Then every effect is counted at the fake.
#
#   sync      synchronous_standby_names, kill -9 while steps are on the move:
#             the worker's keyless claims and outcomes waited for the
#             standby, so it knows each one the primary may have sent.
#   async     no synchronous standby, the standby caught up, immediate
#             shutdown: the same counts.
#   async-lag no synchronous standby, and the standby cut off right after the
#             repair was queued, before the worker began (down, as in a
#             network partition), immediate shutdown later: the new primary
#             starts from where the standby was.  Keyed steps done meanwhile
#             are sent again, harmlessly; keyless ones, which the standby saw
#             queued, are sent again: Cello counts those events twice.  The
#             test checks that those, and only those, are doubled.
#   sync, the standby gone: the worker's claim of a keyless step waits for
#             the synchronous standby; a fast shutdown must still stop it
#             (it did not: the wait ignored SIGTERM), without sending the
#             step; promoted, the standby sends it once.
#
# Each run ends with one line, "failover: <run>: ... lost 0, doubled 0"
# (scripts/test shows it).  FAILOVER_RUNS='sync' (names, space-separated)
# runs only those of the three runs; the last part always runs.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $db = $CelloattrTest::DB;
my ($NS, $NC, $NA) = (10, 5, 5);
my $HOLD = 20;	# seconds the fake holds an answer back: longer than the
				# rest of the repair and the catch-up take on a loaded machine
# answers held back are waited for (request_timeout), not given up
my $CONF = qq{
celloattr.request_timeout = 30s
celloattr.backoff_max = 1s
};
my @KEYLESS = qw(cello_signup cello_transaction chargebee_redeliver);
my $WALRECEIVER = qr/walreceiver|primary server|WAL stream|end-of-streaming|to primary:/;

sub seed
{
	my $seed = guest_seed();
	my $stripe = stripe_seed('fs', $NS)->{stripe};
	$seed->{stripe}{$_} = $stripe->{$_} for qw(customers invoices events settings);
	for my $i (1 .. $NC)
	{
		push @{ $seed->{chargebee}{customers} },
		  { id => "cb_fc$i", email => "fc$i\@example.com", meta_data => { keep => "k$i" }, age_days => 40 };
		push @{ $seed->{chargebee}{events} }, {
			id => "ev_fc$i", event_type => 'payment_succeeded', age_days => 3,
			content => {
				customer => { id => "cb_fc$i" },
				transaction => { id => "txn_fc$i", customer_id => "cb_fc$i", amount => 4900,
					currency_code => 'EUR', status => 'success', type => 'payment' } } };
	}
	fake_reset();
	fake_seed($seed);
}

sub queue_bulk
{
	my ($node) = @_;
	$node->safe_psql($db, qq{
		BEGIN;
		SELECT count(celloattr.cello_attribute('pNRB1aYqArN', 'user-fs' || i, 'stripe', customer_id => 'cus_fs' || i))
		  FROM generate_series(1, $NS) i;
		SELECT count(celloattr.cello_attribute('pNRB1aYqArN', 'user-fc' || i, 'chargebee', customer_id => 'cb_fc' || i))
		  FROM generate_series(1, $NC) i;
		SELECT count(celloattr.cello_attribute('pNRB1aYqArN', 'user-fa' || i, 'cello_api', email => 'fa' || i || '\@example.com'))
		  FROM generate_series(1, $NA) i;
		SELECT count(celloattr.cello_transaction('user-fa' || i, 'inv_fa' || i, 49, 'EUR',
		                                         pg_catalog.now() - interval '1 day', 'monthly', 'Team Plan'))
		  FROM generate_series(1, $NA) i;
		COMMIT;});
}

# Answers of every kind held back: 3 customer updates and 2 resends at
# Stripe, a customer update at Chargebee, 2 redeliveries to Cello's webhook,
# 3 Cello events.
my $HELD = 11;
sub hold_answers
{
	my @stall = (action => 'stall', seconds => $HOLD, method => 'POST');
	fake_fault({ @stall, provider => 'stripe', path_regex => '^/v1/customers/cus_fs[123]$', count => 0 });
	fake_fault({ @stall, provider => 'stripe', path_regex => '^/v1/events/evt_fs[45]/retry$', count => 0 });
	fake_fault({ @stall, provider => 'chargebee', path_regex => '^/customers/cb_fc1$', count => 0 });
	fake_fault({ @stall, provider => 'cello-webhook', count => 2 });
	fake_fault({ @stall, provider => 'cello', path_regex => '^/events', count => 3 });
}

# Requests the fake has held back so far, and how many of them it answered.
sub held
{
	my @held = grep { ($_->{fault} // '') eq 'stall' } @{ fake_requests() };
	return (scalar @held, scalar grep { defined $_->{status} } @held);
}

sub wait_until
{
	my ($what, $cond, $timeout) = @_;
	my $deadline = time + ($timeout // 60);
	until ($cond->())
	{
		die "timed out waiting for $what" if time > $deadline;
		sleep 0.1;
	}
}

# A keyless step's effect, "kind user invoice": what taken() looks up.
sub effect_of
{
	my ($kind, $user, $payload) = @_;
	my $invoice = $kind eq 'cello_transaction' ? ($payload =~ /"invoice_id": "([^"]+)"/)[0] : '';
	return "$kind $user $invoice";
}

# Every keyless effect of the bulk repair.
sub all_keyless_effects
{
	return ((map { "cello_signup user-fa$_ " } 1 .. $NA),
		(map { "cello_transaction user-fa$_ inv_fa$_" } 1 .. $NA),
		(map { "chargebee_redeliver user-fc$_ " } 1 .. $NC));
}

# How often the fake took the keyless effect of a step ($kind, $user, and
# the step's payload or the invoice id).
sub taken
{
	my ($kind, $user, $payload) = @_;
	if ($kind eq 'chargebee_redeliver')
	{
		(my $n = $user) =~ s/^user-fc//;
		return chargebee_redeliveries()->{"ev_fc$n"} // 0;
	}
	my $trigger = $kind eq 'cello_signup' ? 'new-signup' : 'invoice-paid';
	my $invoice = $kind eq 'cello_signup' ? '' : ($payload =~ /"invoice_id": "([^"]+)"/)[0] // $payload;
	return cello_events()->{"$trigger $user $invoice"} // 0;
}

# Keyless effects the fake took from requests up to $last_seq, by effect_of().
sub keyless_taken
{
	my ($last_seq) = @_;
	my %n;
	for my $r (@{ fake_requests() })
	{
		next unless $r->{seq} <= $last_seq && $r->{method} eq 'POST';
		my $status = $r->{applied_status} // $r->{status} // 0;
		next if $status < 200 || $status > 299;
		my $j = $r->{json} // {};
		if ($r->{provider} eq 'cello' && $r->{path} =~ m{^/events})
		{
			my $signup = ($j->{context}{event}{trigger} // '') eq 'new-signup';
			$n{ join ' ', $signup ? 'cello_signup' : 'cello_transaction', $j->{payload}{newUserId} // '',
				  $signup ? '' : $j->{context}{subscription}{invoiceId} // '' }++;
		}
		elsif ($r->{provider} eq 'cello-webhook' && ($j->{id} // '') =~ /^ev_fc(\d+)$/)
		{
			$n{"chargebee_redeliver user-fc$1 "}++;
		}
	}
	return \%n;
}

# Keyless steps in the given states, as [attribution, kind, user, payload].
sub keyless_steps
{
	my ($node, $where) = @_;
	return map { [ split /\|/, $_, 4 ] } split /\n/, $node->safe_psql($db, qq{
		SELECT j.attribution_id || '|' || j.kind || '|' || a.new_user_id || '|' || coalesce(j.payload::text, '')
		  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
		 WHERE j.kind IN ('cello_signup', 'cello_transaction', 'chargebee_redeliver') AND $where
		 ORDER BY j.id});
}

# Keys of the POSTs sent to Stripe and Chargebee, by request: [seq, key, replay].
sub keyed_posts
{
	my @posts;
	for my $r (@{ fake_requests() })
	{
		next unless $r->{method} eq 'POST';
		my $key = $r->{headers}{'idempotency-key'} // $r->{headers}{'chargebee-idempotency-key'} or next;
		push @posts, [ $r->{seq}, $key, $r->{idempotent_replay} ? 1 : 0 ];
	}
	return @posts;
}

# Every effect at the fake, counted: (lost, doubled, keyless doubled, problems).
sub count_effects
{
	my ($lost, $doubled, $keyless_doubled) = (0, 0, 0);
	my @problems;
	my $count = sub {
		my ($what, $n, $keyless) = @_;
		$n //= 0;
		if ($n == 0) { $lost++; push @problems, "$what: never"; }
		elsif ($n > 1) { $doubled++; $keyless_doubled++ if $keyless; push @problems, "$what: $n times"; }
	};

	my (%updated, %resent, %changed, %effects);
	for my $e (@{ fake_state('stripe')->{events} })
	{
		$updated{ $e->{data}{object}{id} }++ if $e->{type} eq 'customer.updated';
	}
	$resent{ $_->{event_id} }++ for grep { $_->{provider} eq 'stripe' } @{ fake_deliveries() };
	for my $e (@{ fake_state('chargebee')->{events} })
	{
		$changed{ $e->{content}{customer}{id} }++ if $e->{event_type} eq 'customer_changed';
	}
	for my $r (@{ fake_requests() })
	{
		next unless $r->{method} eq 'POST';
		my $key = $r->{headers}{'idempotency-key'} // $r->{headers}{'chargebee-idempotency-key'} or next;
		my $status = $r->{applied_status} // $r->{status} // 0;
		next if $r->{idempotent_replay} || $status < 200 || $status > 299;
		$effects{$key}++;
	}
	for my $i (1 .. $NS)
	{
		$count->("Stripe customer cus_fs$i updated", $updated{"cus_fs$i"});
		$count->("Stripe event evt_fs$i resent", $resent{"evt_fs$i"});
	}
	my $cb = fake_state('chargebee')->{customers};
	for my $i (1 .. $NC)
	{
		$count->("Chargebee customer cb_fc$i updated", $changed{"cb_fc$i"});
		my $m = $cb->{"cb_fc$i"}{meta_data} // {};
		push @problems, "Chargebee customer cb_fc$i lacks the referral"
		  unless ($m->{cello_ucc} // '') eq 'pNRB1aYqArN' && ($m->{keep} // '') eq "k$i";
	}
	for my $key (sort keys %effects)
	{
		next unless $effects{$key} > 1;
		$doubled++;
		push @problems, "key $key took effect $effects{$key} times";
	}
	my $redeliveries = chargebee_redeliveries();
	$count->("Chargebee event ev_fc$_ re-delivered", $redeliveries->{"ev_fc$_"}, 1) for 1 .. $NC;
	my $events = cello_events();
	for my $i (1 .. $NA)
	{
		$count->("Cello new-signup of user-fa$i", $events->{"new-signup user-fa$i "}, 1);
		$count->("Cello invoice-paid inv_fa$i", $events->{"invoice-paid user-fa$i inv_fa$i"}, 1);
	}
	return ($lost, $doubled, $keyless_doubled, @problems);
}

# The operator of README: each step set aside is looked up at the fake.
sub settle_set_aside
{
	my ($node) = @_;
	my %did = (mark_delivered => 0, retry => 0);
	for my $round (1 .. 5)
	{
		ok(wait_all_final($node, 90), "round $round: every repair ended or waits for the operator") or last;
		my @aside = map { [ split /\|/, $_, 4 ] } split /\n/, $node->safe_psql($db, q{
			SELECT j.attribution_id || '|' || j.kind || '|' || a.new_user_id || '|' || coalesce(j.payload::text, '')
			  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
			 WHERE j.state = 'failed' ORDER BY j.id});
		last unless @aside;
		my %seen;
		for (@aside)
		{
			my ($id, $kind, $user, $payload) = @$_;
			next if $seen{$id}++;
			if ((grep { $_ eq $kind } @KEYLESS) && taken($kind, $user, $payload))
			{
				$node->safe_psql($db, "SELECT celloattr.mark_delivered($id)");
				$did{mark_delivered}++;
			}
			else
			{
				$node->safe_psql($db, "SELECT celloattr.retry($id)");
				$did{retry}++;
			}
		}
	}
	return %did;
}

sub run_failover
{
	my ($run) = @_;
	my $sync = $run eq 'sync';
	my $lag = $run eq 'async-lag';
	(my $name = $run) =~ s/-/_/g;

	seed();
	my $primary = celloattr_node("primary_$name", $CONF, allows_streaming => 1);
	my $standby = celloattr_standby($primary, "standby_$name");
	if ($sync)
	{
		$primary->safe_psql('postgres', "ALTER SYSTEM SET synchronous_standby_names = 'standby_$name'");
		$primary->reload;
		$primary->poll_query_until('postgres',
			q{SELECT count(*) = 1 FROM pg_stat_replication WHERE sync_state = 'sync'})
		  or die 'the standby did not become synchronous';
	}

	if ($lag)
	{
		$primary->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on');
		$primary->reload;
		$primary->poll_query_until($db, q{SELECT current_setting('celloattr.paused') = 'on'})
		  or die 'the primary did not pause';
	}
	hold_answers();
	queue_bulk($primary);
	my $total = $NS + $NC + $NA;
	if ($lag)
	{
		# the standby has the repair, and from then on nothing more: it
		# lags by all the worker does
		$primary->wait_for_catchup($standby);
		$standby->stop('fast');
		$primary->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = off');
		$primary->reload;
	}
	wait_until('the answers held back', sub { (held())[0] >= $HELD });
	unless ($sync)
	{
		# the rest done: every unfinished repair waits for an answer held back
		$primary->poll_query_until($db, q{
			SELECT count(DISTINCT attribution_id) = (SELECT count(*) FROM celloattr.attributions WHERE state <> 'done')
			  FROM celloattr.jobs WHERE state = 'running'})
		  or die "the repairs did not settle:\n" . $primary->safe_psql($db, q{
			SELECT j.attribution_id, a.new_user_id, a.state, j.kind, j.state, j.attempts, j.last_error
			  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
			 WHERE a.state <> 'done' ORDER BY j.id})
		  . "\n" . join("\n", map { "$_->{provider} $_->{method} $_->{path} " . ($_->{status} // '-') . ' ' . ($_->{fault} // '') }
			@{ fake_requests() });
		$primary->wait_for_catchup($standby) unless $lag;
	}
	my $in_flight = $primary->safe_psql($db,
		q{SELECT count(*) FROM celloattr.attributions WHERE state NOT IN ('done', 'failed')});
	my $running = $primary->safe_psql($db, q{SELECT count(*) FROM celloattr.jobs WHERE state = 'running'});
	my $old_worker = worker_pid($primary);

	# the primary dies with the answers still held back
	if ($sync)
	{
		$primary->kill9;
		wait_until('the old worker to die', sub { !kill(0, $old_worker) });
	}
	else
	{
		$primary->stop('immediate');
	}
	my ($held, $answered) = held();
	$held -= $answered;
	cmp_ok($held, '>', 0, "$run: answers still held back when the primary died");
	fake('POST', '/_control/faults/clear');
	my $sent_before = (sort { $b <=> $a } map { $_->{seq} } @{ fake_requests() })[0];

	# promoted, paused: what the new worker finds
	my $offset = -s $standby->logfile;
	$standby->append_conf('postgresql.conf', "celloattr.paused = on\n");
	if ($lag) { $standby->start; } else { $standby->reload; }
	$standby->promote;
	my $pid = wait_for_new_worker($standby, 0);
	$standby->poll_query_until($db, q{SELECT count(*) = 0 FROM celloattr.jobs WHERE state = 'running'})
	  or die 'the steps left running were not taken up';
	my $requeued = $standby->safe_psql($db,
		q{SELECT count(*) FROM celloattr.jobs WHERE interruptions > 0 AND state = 'queued'});
	my $set_aside = $standby->safe_psql($db,
		q{SELECT count(*) FROM celloattr.jobs WHERE state = 'failed' AND last_error LIKE 'set aside:%'});
	# what the new primary holds done or set aside, before it runs anything
	my %known = map { effect_of(@$_[1 .. 3]) => 1 }
	  keyless_steps($standby, q{j.state IN ('done', 'failed')});
	$standby->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = off');
	$standby->reload;

	# keyless effects the fake took from the old primary (its answers held
	# back come meanwhile) that the new one knows nothing of: it sends them
	# again
	wait_until('the answers held back', sub { my ($h, $a) = held(); $a >= $h }, 2 * $HOLD + 10);
	my $old = keyless_taken($sent_before);
	my $resend = grep { !$known{$_} && $old->{$_} } all_keyless_effects();
	if ($lag)
	{
		cmp_ok($resend, '>', 0, "$run: the standby missed keyless steps the primary sent");
	}
	else
	{
		is($resend, 0, "$run: the standby knows of every keyless step the primary sent");
	}

	my %operator = settle_set_aside($standby);
	is($standby->safe_psql($db, q{SELECT string_agg(state || ' ' || n, ', ') FROM
		(SELECT state, count(*) n FROM celloattr.attributions GROUP BY state) s}),
		"done $total", "$run: every repair done on the new primary");
	is(unfinished_steps($standby), '', "$run: every step in a final state");

	# keys the old primary had sent that the new one sent again; the
	# provider took one of each, and answered the other from its store
	my (%before, %after, %replayed);
	for (keyed_posts())
	{
		my ($seq, $key, $replay) = @$_;
		($seq <= $sent_before ? \%before : \%after)->{$key} = 1;
		$replayed{$key} ||= $replay;
	}
	my @again = grep { $before{$_} } keys %after;
	my $from_store = grep { $replayed{$_} } @again;
	is($from_store, scalar @again, "$run: each keyed request sent again was answered from the provider's store once");

	my ($lost, $doubled, $keyless_doubled, @problems) = count_effects();
	diag($_) for @problems;
	is($lost, 0, "$run: lost 0");
	is($doubled - $keyless_doubled, 0, "$run: no keyed change applied twice");
	is($keyless_doubled, $lag ? $resend : 0,
		$lag ? "$run: doubled only the keyless steps the standby had not seen claimed ($resend)"
		: "$run: no keyless event taken twice");
	is(log_problems($standby, $offset,
			qr/$WALRECEIVER|set aside after the worker stopped|canceling wait for synchronous/), '',
		"$run: the new primary logged no other warning or error");
	check_guest($standby, $pid, $run);
	note sprintf('failover: %s: %d repairs, %d in flight at the stop (%d steps running, %d answers held back);'
		  . ' the new primary requeued %d keyed steps and set %d keyless aside (operator: %d mark_delivered, %d retry);'
		  . ' %d keyed requests sent again (%d of them answered from the idempotency store), %d keyless sent again;'
		  . ' lost %d, doubled %d',
		$run, $total, $in_flight, $running, $held, $requeued, $set_aside, @operator{qw(mark_delivered retry)},
		scalar @again, $from_store, $keyless_doubled, $lost, $doubled);
	$standby->stop;
}

run_failover($_) for split ' ', ($ENV{FAILOVER_RUNS} // 'sync async async-lag');

# The synchronous standby gone: the worker's claim of a keyless step waits
# for it; a fast shutdown must stop the worker all the same, without the
# step sent; promoted, the standby sends it, once.
{
	seed();
	my $primary = celloattr_node('primary_gone', $CONF, allows_streaming => 1);
	my $standby = celloattr_standby($primary, 'standby_gone');
	$primary->safe_psql('postgres', q{ALTER SYSTEM SET synchronous_standby_names = 'standby_gone'});
	$primary->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on');
	$primary->reload;
	$primary->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_replication WHERE sync_state = 'sync'})
	  or die 'the standby did not become synchronous';
	$primary->poll_query_until($db, q{SELECT current_setting('celloattr.paused') = 'on'})
	  or die 'the primary did not pause';
	my $id = attribute_in($primary, 'user-fa1', 'cello_api', q{email => 'fa1@example.com'});
	$standby->stop('fast');

	$primary->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = off');
	$primary->reload;
	$primary->poll_query_until('postgres', q{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE backend_type = 'celloattr worker' AND wait_event = 'SyncRep'})
	  or die 'the worker did not wait for the standby';
	my ($out, $err);
	my $stopped = IPC::Run::run([ 'pg_ctl', '-D', $primary->data_dir, '-m', 'fast', '-t', '60', 'stop' ],
		'>', \$out, '2>', \$err);
	ok($stopped, 'the standby gone: a fast shutdown stops the worker waiting for it');
	if ($stopped) { $primary->_update_pid(0); } else { $primary->kill9; }
	is(scalar(grep { $_->{method} eq 'POST' } @{ fake_requests('cello') }), 0,
		'the standby gone: the step claimed meanwhile was not sent');
	like(slurp_file($primary->logfile), qr/canceling wait for synchronous replication/,
		'the standby gone: the wait was cancelled, and PostgreSQL says so');

	$standby->start;
	$standby->promote;
	my $pid = wait_for_new_worker($standby, 0);
	is($standby->safe_psql($db, "SELECT celloattr.wait($id, '60 s')"), 'done', 'promoted: the repair done');
	is(cello_events()->{'new-signup user-fa1 '}, 1, 'promoted: the event taken once');
	check_guest($standby, $pid, 'the standby gone');
	$standby->stop;
}

done_testing();
