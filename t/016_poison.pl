# t/016_poison.pl: an ERROR in the worker's transactions ends neither the
# worker nor the batch, and resends nothing.
#
# Poisoned outcomes: a Chargebee payment event holding \u0000 (which jsonb
# refuses unless escaped), NUL and invalid UTF-8 in customers and answers
# of every provider, and outcomes the tables refuse (a CHECK constraint a DBA added
# that one step's result or log rows break).  Each fails its own step with
# the error, the rest of its batch is recorded, nothing is sent twice.  A
# step claimed after its last attempt is given up without being sent.  A
# cancelled statement of the worker is tried again.  Through it all the
# worker keeps its pid.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('poison', "celloattr.max_attempts = 3\n");
my $db = $CelloattrTest::DB;
my $pid = worker_pid($node);

my $seed = guest_seed();
# a payment event of a Chargebee customer with a NUL in its content
push @{ $seed->{chargebee}{customers} },
  { id => 'cb_nul', email => 'nul@example.com', age_days => 40, meta_data => { plan => 'gold' } },
  { id => 'cb_ok', email => 'ok@example.com', age_days => 40 },
  { id => 'cb_name', email => "name\@example.com", first_name => "Ja\x{0}ne", age_days => 40,
	meta_data => { note => "a\x{0}b" } };
for my $c (qw(nul ok name))
{
	push @{ $seed->{chargebee}{events} }, {
		id => "ev_$c", event_type => 'payment_succeeded', age_days => 3,
		content => {
			customer => { id => "cb_$c", first_name => ($c eq 'nul' ? "Ja\x{0}ne" : 'Jane') },
			transaction => { id => "txn_$c", customer_id => "cb_$c", amount => 4900,
				currency_code => 'EUR', status => 'success', type => 'payment' },
			invoice => { id => "inv_$c", customer_id => "cb_$c", amount_paid => 4900,
				currency_code => 'EUR', status => 'paid' } } };
}
# Stripe: a customer name with a NUL, an event whose object holds one
push @{ $seed->{stripe}{customers} }, { id => 'cus_nul', name => "Ja\x{0}ne", metadata => {} },
  { id => 'cus_utf', metadata => {} }, { id => 'cus_poisonlog', metadata => {} };
push @{ $seed->{stripe}{invoices} }, { id => 'in_nul', customer => 'cus_nul', status => 'paid', age_days => 2,
	description => "x\x{0}y" };
push @{ $seed->{stripe}{events} }, { id => 'evt_nul', type => 'invoice.paid', invoice => 'in_nul', age_days => 2 };
fake_reset();
fake_seed($seed);

sub attribute { return attribute_in($node, @_); }

sub state_of
{
	my ($id) = @_;
	return $node->safe_psql($db, "SELECT celloattr.wait($id, '60 s')");
}

sub step
{
	my ($id, $kind) = @_;
	return $node->safe_psql($db, qq{
		SELECT state || ' | ' || coalesce(last_error, '') FROM celloattr.jobs
		 WHERE attribution_id = $id AND kind = '$kind'});
}

# 1. the issue's case: the mixed Chargebee path (Cello signup first), one
# event holding \u0000, queued with healthy repairs in the same batches
my %id;
$id{nul} = attribute('user-cbnul', 'chargebee', "customer_id => 'cb_nul', signup_via_api => true");
$id{ok} = attribute('user-cbok', 'chargebee', "customer_id => 'cb_ok', signup_via_api => true");
$id{name} = attribute('user-cbname', 'chargebee', "customer_id => 'cb_name'");
$id{snul} = attribute('user-snul', 'stripe', "customer_id => 'cus_nul', signup_via_api => true");
$id{api} = attribute('user-api1', 'cello_api', "email => 'api1\@example.com'");
ok(wait_all_final($node, 60), 'poisoned events: every repair ended');

# (what jsonb refuses is escaped on the way in, src/common/dbtext.c and json.c:
# the event is stored and re-delivered like any other; t/013_text.pl
# checks its bytes.  Outcomes the tables do refuse are part 3.)
is(state_of($id{nul}), 'done', 'NUL in a Chargebee event: the repair done');
like(step($id{nul}, 'cello_signup'), qr/^done/, 'NUL in a Chargebee event: the signup before it is done');
is(chargebee_redeliveries()->{ev_nul}, 1, 'NUL in a Chargebee event: re-delivered once');
is(state_of($id{ok}), 'done', 'a healthy Chargebee repair beside it: done');
is(chargebee_redeliveries()->{ev_ok}, 1, 'a healthy Chargebee repair beside it: its event re-delivered once');
like(state_of($id{name}), qr/^(done|failed)$/, 'NUL in a Chargebee customer name and meta_data: ended');
like(state_of($id{snul}), qr/^(done|failed)$/, 'NUL in a Stripe customer name and invoice: ended');
is(state_of($id{api}), 'done', 'a Cello API signup beside them: done');
is(cello_events()->{'new-signup user-cbnul '}, 1, 'the signup of the poisoned repair sent once');

# 2. invalid UTF-8 in answers: Cello's referral code check, a Stripe error
fake_fault({ provider => 'cello', method => 'GET', path_regex => '^/referral-codes/',
	action => 'status', status => 200,
	body_hex => unpack('H*', '{"code":"pNRB1aYqArN","valid":true,"productUserId":"r' . "\xff\xfe" . '","campaignId":"c1"}') });
fake_fault({ provider => 'stripe', method => 'GET', path_regex => '^/v1/customers/cus_utf$',
	action => 'status', status => 400,
	body_hex => unpack('H*', '{"error":{"type":"invalid_request_error","message":"bad ' . "\xc3\x28" . ' name"}}') });
$id{utfc} = attribute('user-utfc', 'cello_api', "email => 'utfc\@example.com'");
$id{utfs} = attribute('user-utfs', 'stripe', "customer_id => 'cus_utf'");
ok(wait_all_final($node, 60), 'invalid UTF-8: every repair ended');
like(state_of($id{utfc}), qr/^(done|failed)$/, 'invalid UTF-8 in a Cello answer: ended');
is(state_of($id{utfs}), 'failed', 'invalid UTF-8 in a Stripe error: failed');
fake('POST', '/_control/faults/clear');

# 3. outcomes the tables refuse: a DBA's constraints break one step's
# result (a Cello event, acknowledged) and another's log rows
$node->safe_psql($db, q{
	ALTER TABLE celloattr.jobs ADD CONSTRAINT poison
		CHECK (result IS NULL OR result::text NOT LIKE '%poison-org%');
	ALTER TABLE celloattr.http_log ADD CONSTRAINT poison CHECK (url NOT LIKE '%cus_poisonlog%')});
$id{pres} = attribute('user-pres', 'cello_api', "organization_id => 'poison-org'");
$id{plog} = attribute('user-plog', 'stripe', "customer_id => 'cus_poisonlog'");
$id{p1} = attribute('user-p1', 'cello_api', "organization_id => 'fine-org'");
ok(wait_all_final($node, 60), 'refused outcomes: every repair ended');
like(step($id{pres}, 'cello_signup'), qr/^failed \| its outcome could not be recorded \(it was done, last answer HTTP 200\): .*"poison"/,
	'a refused Cello result: the step failed, saying its event was acknowledged');
is(cello_events()->{'new-signup user-pres '}, 1, 'a refused Cello result: the event was sent once');
like(step($id{plog}, 'stripe_customer'), qr/^failed \| its outcome could not be recorded.*"poison"/,
	'refused log rows: the step failed with the error');
is($node->safe_psql($db, "SELECT count(*) FROM celloattr.http_log WHERE attribution_id = $id{plog}"), 0,
	'refused log rows: recorded without them');
is(state_of($id{p1}), 'done', 'a healthy repair in the same batch: done');
$node->safe_psql($db, q{
	ALTER TABLE celloattr.jobs DROP CONSTRAINT poison;
	ALTER TABLE celloattr.http_log DROP CONSTRAINT poison});

# 4. a step claimed after its last attempt is given up, not sent
$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on; SELECT pg_reload_conf()');
sleep 1;
$id{cap} = attribute('user-cap', 'cello_api', "email => 'cap\@example.com'");
$id{capstripe} = attribute('user-capstripe', 'stripe', "customer_id => 'cus_utf'");
$node->safe_psql($db, "UPDATE celloattr.jobs SET attempts = 3 WHERE attribution_id IN ($id{cap}, $id{capstripe})");
my $before = scalar @{ fake_requests() };
$node->safe_psql('postgres', 'ALTER SYSTEM RESET celloattr.paused; SELECT pg_reload_conf()');
ok(wait_all_final($node, 60), 'out of attempts: ended');
like(step($id{cap}, 'cello_signup'), qr/^(failed|support) \| gave up after 3 attempts: claimed again after its last attempt/,
	'a Cello signup out of attempts: given up');
like(step($id{capstripe}, 'stripe_customer'), qr/^failed \| gave up after 3 attempts/,
	'a Stripe step out of attempts: given up');
is(scalar @{ fake_requests() }, $before, 'out of attempts: nothing sent');

# 5. a cancelled statement of the worker (pg_cancel_backend, as an
# application's statement_timeout would) is an ERROR it recovers from
$node->safe_psql($db, "SELECT pg_cancel_backend($pid)") for 1 .. 3;
$id{after} = attribute('user-after', 'cello_api', "email => 'after\@example.com'");
is(state_of($id{after}), 'done', 'after cancels: the worker goes on');

check_at_most_once('poison');
check_guest($node, $pid, 'poison');
unlike(slurp_file($node->logfile), qr/celloattr worker.*terminated/, 'no "terminated" in the log');

$node->stop;
done_testing();
