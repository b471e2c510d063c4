# t/CelloattrTest.pm: what the celloattr TAP tests share.

=pod

=head1 NAME

CelloattrTest - what the celloattr TAP tests share

=head1 DESCRIPTION

Each TAP test starts its own node with the library preloaded and the
worker pointed at the local API fake that scripts/test started: the
settings come from the file named by CELLOATTR_TAP_CONF (written by
scripts/test with the same write_conf as the pg_regress suites), the
provider secrets from the secrets file beside it (copied into each node's
data directory, where README.md tells an installation to keep it), the
fake's port from FAKE_API_PORT_FILE.  The fake is driven through its
control API (test/fake/README.md) directly over HTTP.

The effect checks are the heart of these tests: whatever happened to the
worker, at the fake every idempotency key has at most one POST that took
effect, every customer's metadata was set once and every event was resent
once.

=cut

package CelloattrTest;

use strict;
use warnings;

use Exporter 'import';
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

our @EXPORT = qw(
  celloattr_node fake fake_reset fake_seed fake_fault fake_requests
  fake_state fake_deliveries worker_pid wait_for_new_worker
  wait_all_final stripe_seed queue_stripe check_stripe_effects
  worker_crashes psql_within attribute_one test_secrets write_node_secrets
  guest_seed cello_events chargebee_redeliveries check_at_most_once
  check_guest unfinished_steps worker_terminations attribute_in psql_may_fail
  celloattr_standby log_problems workers wait_workers);

# Test names may hold multi-byte values (t/005_hostile.pl).
# PostgreSQL::Test::Utils ties Test::More's output handles to a tee into
# the test's log (in its INIT block, which runs before this one), and the
# tee dies on a wide character since 18 (fatal warnings): the handles it
# writes to take UTF-8, each once.
INIT
{
	my %utf8;
	for my $name (qw(output failure_output todo_output))
	{
		my $fh = Test::More->builder->$name;
		my $tee = tied *$fh;
		for my $h ($tee ? @$tee : ($fh))
		{
			binmode($h, ':encoding(UTF-8)') unless $utf8{ fileno($h) // "$h" }++;
		}
	}
}

# The database the worker serves in every TAP test.
our $DB = 'celloattr_tap';

sub fake_base
{
	my $file = $ENV{FAKE_API_PORT_FILE}
	  or BAIL_OUT('FAKE_API_PORT_FILE is not set: run the TAP tests through scripts/test');
	my $port = slurp_file($file);
	chomp $port;
	return "http://127.0.0.1:$port";
}

# A call to the fake's control API; returns the decoded JSON answer.
sub fake
{
	my ($method, $path, $body) = @_;
	my $res = HTTP::Tiny->new(timeout => 60)->request(
		$method,
		fake_base() . $path,
		defined $body
		? {
			content => encode_json($body),
			headers => { 'content-type' => 'application/json' }
		  }
		: {});
	die "fake $method $path: $res->{status} $res->{content}"
	  unless $res->{success};
	return decode_json($res->{content});
}

sub fake_reset { fake('POST', '/_control/reset'); }
sub fake_seed { fake('POST', '/_control/seed', $_[0]); }
sub fake_fault { fake('POST', '/_control/fault', $_[0]); }

sub fake_requests
{
	my ($provider) = @_;
	return fake('GET', '/_control/requests' . ($provider ? "?provider=$provider" : ''));
}

sub fake_state
{
	my ($provider) = @_;
	return fake('GET', "/_control/state?provider=$provider");
}

sub fake_deliveries { fake('GET', '/_control/deliveries'); }

# The secrets file scripts/test wrote beside the settings.
sub secrets_file
{
	my $conf = $ENV{CELLOATTR_TAP_CONF}
	  or BAIL_OUT('CELLOATTR_TAP_CONF is not set: run the TAP tests through scripts/test');
	return $conf =~ s/\.conf$/.secrets/r;
}

# The suite's provider secrets: key => value.
sub test_secrets
{
	my %secrets = slurp_file(secrets_file()) =~ /^(\w+) = '([^']*)'$/mg;
	return \%secrets;
}

=pod

=item write_node_secrets($node, $text)

Replaces the node's secrets file (celloattr.secrets in its data directory,
mode 0600) with $text; the worker reads it on the next reload.

=cut

sub write_node_secrets
{
	my ($node, $text) = @_;
	my $file = $node->data_dir . '/celloattr.secrets';
	open(my $fh, '>', "$file.new") or die "$file.new: $!";
	print $fh $text;
	close($fh) or die "$file.new: $!";
	chmod(0600, "$file.new") or die "chmod $file.new: $!";
	rename("$file.new", $file) or die "rename to $file: $!";
}

=pod

=item celloattr_node($name, $extra_conf, %init)

A started node whose worker serves $DB (created, with the extension), with
the suite's settings plus $extra_conf, and the suite's secrets in the
default secrets file of its data directory.  %init goes to
PostgreSQL::Test::Cluster's init (allows_streaming => 1 for a primary).

=cut

sub celloattr_node
{
	my ($name, $extra, %init) = @_;
	my $conf = $ENV{CELLOATTR_TAP_CONF}
	  or BAIL_OUT('CELLOATTR_TAP_CONF is not set: run the TAP tests through scripts/test');
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(%init);
	$node->append_conf('postgresql.conf', slurp_file($conf));
	write_node_secrets($node, slurp_file(secrets_file()));
	# a crashed worker restarts the server's processes, as in production
	$node->append_conf('postgresql.conf',
		"celloattr.database = '$DB'\nrestart_after_crash = on\n"
		  . "celloattr.secrets_file = 'celloattr.secrets'\n"
		  . ($extra // ''));
	$node->start;
	$node->safe_psql('postgres', "CREATE DATABASE $DB");
	$node->safe_psql($DB, 'CREATE EXTENSION celloattr');
	wait_for_new_worker($node, 0);
	return $node;
}

=pod

=item celloattr_standby($primary, $name, $extra_conf)

A started hot standby of $primary (made with allows_streaming => 1),
streaming from it, from a new base backup: the settings of the primary
(postgresql.conf is in the backup) plus $extra_conf, and the suite's
secrets, written again with their mode (a copied backup may lose it).

=cut

sub celloattr_standby
{
	my ($primary, $name, $extra) = @_;
	my $backup = "${name}_backup";

	$primary->backup($backup);
	my $standby = PostgreSQL::Test::Cluster->new($name);
	$standby->init_from_backup($primary, $backup, has_streaming => 1);
	write_node_secrets($standby, slurp_file(secrets_file()));
	$standby->append_conf('postgresql.conf', $extra) if $extra;
	$standby->start;
	return $standby;
}

=pod

=item log_problems($node, $offset, $except)

The lines of the node's server log (from byte $offset on) at WARNING or
above, but those matching the regex $except.

=cut

sub log_problems
{
	my ($node, $offset, $except) = @_;
	my $log = substr(slurp_file($node->logfile), $offset // 0);
	return join '', grep { /\b(?:WARNING|ERROR|FATAL|PANIC):/ && !($except && /$except/) } split /^/, $log;
}

# ($rc, $out) of psql, for a poll that may meet a server restarting after
# a kill -9: psql can then exit before it reads its input, and IPC::Run
# dies of the broken pipe; that counts as a failed run (1), not the test's end.
sub psql_may_fail
{
	my ($node, $db, $sql) = @_;
	my ($rc, $out) = eval { $node->psql($db, $sql) };
	return (defined $rc ? $rc : 1, $out // '');
}

# The worker's pid, or 0 when none runs.
sub worker_pid
{
	my ($node) = @_;
	my ($rc, $out) = psql_may_fail($node, 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'celloattr worker'");
	return ($rc == 0 && $out =~ /^(\d+)$/) ? $1 : 0;
}

# The running celloattr workers, as { database => pid }.
sub workers
{
	my ($node) = @_;
	my %pids = split /[|\n]/, $node->safe_psql('postgres', q{
		SELECT datname, pid FROM pg_stat_activity
		 WHERE backend_type = 'celloattr worker' AND datname IS NOT NULL});
	return \%pids;
}

# Wait until $check->(workers) holds (30 s unless told); the workers last seen.
sub wait_workers
{
	my ($node, $check, $seconds) = @_;
	my $deadline = time + ($seconds // 30);
	my $w;
	while (time < $deadline)
	{
		$w = workers($node);
		return $w if $check->($w);
		sleep 0.1;
	}
	return $w;
}

# Wait for a worker other than $old_pid; returns its pid (dies on timeout).
sub wait_for_new_worker
{
	my ($node, $old_pid) = @_;
	my $deadline = time + 60;

	while (time < $deadline)
	{
		my $pid = worker_pid($node);
		return $pid if $pid && $pid != $old_pid;
		sleep 0.1;
	}
	die "no new celloattr worker after pid $old_pid";
}

# Wait until no attribution is queued or running; true if that happened.
sub wait_all_final
{
	my ($node, $timeout) = @_;
	my $deadline = time + ($timeout // 120);

	while (time < $deadline)
	{
		my ($rc, $out) = psql_may_fail($node, $DB,
			"SELECT count(*) FROM celloattr.attributions WHERE state IN ('queued', 'running')");
		return 1 if $rc == 0 && $out eq '0';
		sleep 0.2;
	}
	return 0;
}

=pod

=item stripe_seed($prefix, $n)

A seed of $n Stripe customers "cus_${prefix}N", each with a paid invoice and
its invoice.paid event inside the window, and Cello's webhook endpoint.
Every update emits customer.updated, a no-op one too, so an update made
twice is seen even when it sets the same values.

=cut

sub stripe_seed
{
	my ($prefix, $n) = @_;
	my (@customers, @invoices, @events);

	for my $i (1 .. $n)
	{
		push @customers,
		  {
			id => "cus_$prefix$i",
			email => "$prefix$i\@example.com",
			metadata => { keep => "k$i" }
		  };
		push @invoices,
		  {
			id => "in_$prefix$i",
			customer => "cus_$prefix$i",
			status => 'paid',
			age_days => 2
		  };
		push @events,
		  {
			id => "evt_$prefix$i",
			type => 'invoice.paid',
			invoice => "in_$prefix$i",
			age_days => 2
		  };
	}
	return {
		stripe => {
			customers => \@customers,
			invoices => \@invoices,
			events => \@events,
			webhook_endpoints => [ { id => 'we_cello_test' } ],
			# a second update, even to the same values, shows as an event
			settings => { emit_noop_updates => JSON::PP::true }
		}
	};
}

# Queue one Stripe attribution per seeded customer, in one transaction (in
# $db, $DB unless told).
sub queue_stripe
{
	my ($node, $prefix, $n, $db) = @_;
	$node->safe_psql($db // $DB, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-$prefix' || i, 'stripe',
		                                 customer_id => 'cus_$prefix' || i)
		  FROM generate_series(1, $n) i});
}

=pod

=item check_stripe_effects($node, $prefix, $n)

Every attribution of the prefix is done with all its steps; at the fake,
each idempotency key took effect at most once, each customer's metadata
was set by exactly one update, and each event was resent exactly once.

=cut

sub check_stripe_effects
{
	my ($node, $prefix, $n) = @_;

	is( $node->safe_psql($DB, qq{
			SELECT state || ' ' || count(*) FROM celloattr.attributions
			 WHERE new_user_id LIKE 'user-$prefix%' GROUP BY state}),
		"done $n", "$prefix: all $n attributions done");
	is( $node->safe_psql($DB, qq{
			SELECT j.kind || ' ' || j.state || ' ' || count(*)
			  FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
			 WHERE a.new_user_id LIKE 'user-$prefix%'
			 GROUP BY j.kind, j.state ORDER BY j.kind, j.state}),
		"stripe_customer done $n\nstripe_payments done $n\nstripe_resend done $n",
		"$prefix: no step lost or left behind");

	# a POST took effect if the API processed it as new and succeeded,
	# whether or not the worker saw the answer
	my %effects;
	my $posts = 0;
	for my $r (@{ fake_requests('stripe') })
	{
		next unless $r->{method} eq 'POST' && $r->{path} =~ /$prefix\d/;
		$posts++;
		my $status = $r->{applied_status} // $r->{status} // 0;
		next if $r->{idempotent_replay} || $status < 200 || $status > 299;
		$effects{ $r->{headers}{'idempotency-key'} // 'none' }++;
	}
	my @doubled = grep { $effects{$_} > 1 } sort keys %effects;
	is("@doubled", '', "$prefix: no idempotency key took effect twice");
	is(scalar(keys %effects), 2 * $n,
		"$prefix: $n metadata updates and $n resends took effect ($posts POSTs sent)");

	my %updated;
	for my $e (@{ fake_state('stripe')->{events} })
	{
		$updated{ $e->{data}{object}{id} }++
		  if $e->{type} eq 'customer.updated'
		  && $e->{data}{object}{id} =~ /^cus_$prefix\d+$/;
	}
	my @wrong = grep { ($updated{"cus_$prefix$_"} // 0) != 1 } 1 .. $n;
	is("@wrong", '', "$prefix: every customer updated exactly once");

	my $state = fake_state('stripe');
	my @unset = grep {
		my $m = $state->{customers}{"cus_$prefix$_"}{metadata};
		!($m->{cello_ucc} eq 'pNRB1aYqArN'
			&& $m->{new_user_id} eq "user-$prefix$_"
			&& $m->{keep} eq "k$_")
	} 1 .. $n;
	is("@unset", '', "$prefix: every customer carries the referral, other keys kept");

	my %resent;
	$resent{ $_->{event_id} }++
	  for grep { $_->{event_id} =~ /^evt_$prefix\d+$/ } @{ fake_deliveries() };
	@wrong = grep { ($resent{"evt_$prefix$_"} // 0) != 1 } 1 .. $n;
	is("@wrong", '', "$prefix: every event resent exactly once");
}

=pod

=item psql_within($node, $db, $sql, $seconds)

Runs $sql, giving up after $seconds; returns (exit code, timed out, stderr).

=cut

sub psql_within
{
	my ($node, $db, $sql, $seconds) = @_;
	my ($out, $err, $timed_out);
	my $rc = $node->psql($db, $sql, stdout => \$out, stderr => \$err,
		timeout => $seconds, timed_out => \$timed_out);
	return ($rc, $timed_out, $err);
}

# Queue one attribution of a seeded customer and wait for it; its state.
sub attribute_one
{
	my ($node, $prefix, $i) = @_;
	# committed first: the worker sees nothing before that
	my $id = $node->safe_psql($DB, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-$prefix$i',
		                                 'stripe', customer_id => 'cus_$prefix$i')});
	return $node->safe_psql($DB, "SELECT celloattr.wait($id, '60 s')");
}

=pod

=item guest_seed()

What the fault-injection tests (t/012 onwards) share at the fake: Cello's
API keys and referral codes, Cello's Chargebee webhook credentials and
Chargebee's API key.  Add customers and events to it.

=cut

sub guest_seed
{
	return {
		cello => {
			access_key_id => 'AKID-celloattr-test',
			secret_access_key => 'cello-secret-access-key-1234',
			referral_codes => {
				pNRB1aYqArN => { valid => JSON::PP::true, productUserId => 'referrer-1', campaignId => 'c1' }
			}
		},
		chargebee => { api_keys => ['test_cbkey_celloattr_secret_9876'], customers => [], events => [] },
		chargebee_webhook => { username => 'cello-product-id', password => 'cello-webhook-secret-4242' },
		stripe => { webhook_endpoints => [ { id => 'we_cello_test' } ], customers => [],
			invoices => [], events => [] },
	};
}

# Events Cello's API took (POST /events answered 2xx, or processed and
# then cut by a fault), by "trigger newUserId invoiceId".
sub cello_events
{
	my %n;
	for my $r (@{ fake_requests('cello') })
	{
		next unless $r->{method} eq 'POST' && $r->{path} =~ m{^/events};
		my $status = $r->{applied_status} // $r->{status} // 0;
		next if $status < 200 || $status > 299;
		my $e = $r->{json} // {};
		my $key = join ' ', $e->{context}{event}{trigger} // '',
		  $e->{payload}{newUserId} // '', $e->{context}{subscription}{invoiceId} // '';
		$n{$key}++;
	}
	return \%n;
}

# Chargebee events re-delivered to Cello's webhook, by event id.
sub chargebee_redeliveries
{
	my %n;
	$n{ $_->{event_id} }++ for grep { $_->{provider} eq 'chargebee' } @{ fake_deliveries() };
	return \%n;
}

=pod

=item check_at_most_once($label)

No Cello event and no Chargebee redelivery (they carry no idempotency key)
reached the fake twice.

=cut

sub check_at_most_once
{
	my ($label) = @_;
	my $events = cello_events();
	my $deliveries = chargebee_redeliveries();
	my @twice = grep { $events->{$_} > 1 } sort keys %$events;
	is("@twice", '', "$label: no Cello event taken twice (" . scalar(keys %$events) . ' taken)');
	@twice = grep { $deliveries->{$_} > 1 } sort keys %$deliveries;
	is("@twice", '', "$label: no Chargebee event re-delivered twice ("
		  . scalar(keys %$deliveries) . ' re-delivered)');
}

# Steps that are not in a final state, as "id kind state" lines.
sub unfinished_steps
{
	my ($node) = @_;
	return $node->safe_psql($DB, q{
		SELECT string_agg(id || ' ' || kind || ' ' || state, ', ' ORDER BY id)
		  FROM celloattr.jobs WHERE state IN ('waiting', 'queued', 'running')});
}

# Lines of the server log where a celloattr worker ended with an error or
# a signal (an exit the launcher would answer with a new worker).
sub worker_terminations
{
	my ($node) = @_;
	my $log = slurp_file($node->logfile);
	return scalar(() = $log =~ /celloattr worker.*(?:terminated by signal|exited with exit code [^0])/g);
}

=pod

=item check_guest($node, $pid, $label)

The worker behaved as a guest: the same process all along (no restart, no
exit in the log), every step in a final state, no step attempted more than
max_attempts times.

=cut

sub check_guest
{
	my ($node, $pid, $label) = @_;
	is(worker_pid($node), $pid, "$label: the same worker all along");
	is(worker_terminations($node), 0, "$label: no worker exited or was terminated");
	is(unfinished_steps($node), '', "$label: every step in a final state");
	my $max = $node->safe_psql($DB, q{SELECT current_setting('celloattr.max_attempts')});
	cmp_ok($node->safe_psql($DB, 'SELECT coalesce(max(attempts), 0) FROM celloattr.jobs'),
		'<=', $max, "$label: no step attempted more than max_attempts ($max) times");
}

# Queue one attribution of $user on $gateway with the suite's ucc (and the
# named arguments in $extra, SQL); its id.
sub attribute_in
{
	my ($node, $user, $gateway, $extra) = @_;
	return $node->safe_psql($DB, "SELECT celloattr.cello_attribute('pNRB1aYqArN', '$user', '$gateway'"
		  . ($extra ? ", $extra" : '') . ')');
}

# Lines of the server log where a celloattr worker died of a signal.
sub worker_crashes
{
	my ($node) = @_;
	my $log = slurp_file($node->logfile);
	return scalar(() = $log =~ /celloattr worker.*terminated by signal/g);
}

1;
