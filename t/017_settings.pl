# t/017_settings.pl: settings and schemas a database owner controls do not
# reach the worker.
#
# A database owner who is not superuser shadows pg_catalog functions and an
# operator in public with code that makes them superuser when the worker
# runs it, puts public first in the database's search_path and plants
# timeouts, read-only, serializable and planner settings; the role's
# settings (ALTER ROLE ... IN DATABASE) and postgresql.conf (ALTER SYSTEM,
# then a reload) plant more.  The worker, started afresh and then reloaded,
# runs repairs on every path: none of the owner's code runs, the owner is
# no superuser, every step ends and nothing is sent twice.  The owner also
# names their own role as the session's (role, session_authorization) and
# makes every ERROR an exit (exit_on_error): the worker stays superuser,
# and recovers from a cancel without exiting.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('settings', "celloattr.max_attempts = 3\n");
my $db = $CelloattrTest::DB;
my $super = $node->safe_psql('postgres', 'SELECT current_user');

# the test's own sessions keep sane settings (PGOPTIONS beats the
# database's and the role's); the worker gets no such help
$ENV{PGOPTIONS} = join ' ', map { "-c $_" } 'search_path=pg_catalog,pg_temp',
  'statement_timeout=0', 'lock_timeout=0', 'idle_in_transaction_session_timeout=0',
  'default_transaction_read_only=off',
  'default_transaction_isolation=read\\ committed', 'session_replication_role=origin',
  "session_authorization=$super", 'role=none', 'exit_on_error=off';

$node->safe_psql('postgres', qq{
	CREATE ROLE dbo LOGIN NOSUPERUSER;
	ALTER DATABASE $db OWNER TO dbo;});

# the owner's trap: each function or operator records who ran it and, if
# that was the worker, makes dbo superuser
sub as_dbo
{
	my ($sql) = @_;
	# session_replication_role is not the owner's to set
	local $ENV{PGOPTIONS} = '-c search_path=pg_catalog,pg_temp -c statement_timeout=0';
	my ($rc, $out, $err) = $node->psql($db, $sql, extra_params => [ '-U', 'dbo', '-v', 'ON_ERROR_STOP=1' ]);
	die "as dbo: $err" if $rc;
}
as_dbo(q{
	CREATE TABLE public.called (fn text, backend text, at timestamptz DEFAULT pg_catalog.clock_timestamp());
	GRANT INSERT ON public.called TO PUBLIC;
	CREATE FUNCTION public.trap(fn text) RETURNS void LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp AS $$
	DECLARE who text;
	BEGIN
		SELECT backend_type INTO who FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid();
		BEGIN
			INSERT INTO public.called (fn, backend) VALUES (fn, who);
			IF who OPERATOR(pg_catalog.=) 'celloattr worker' THEN
				EXECUTE 'ALTER ROLE dbo SUPERUSER';
			END IF;
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
	END $$;
	CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS
		$$ BEGIN PERFORM public.trap('now'); RETURN pg_catalog.now(); END $$;
	CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
		$$ BEGIN PERFORM public.trap('clock_timestamp'); RETURN pg_catalog.clock_timestamp(); END $$;
	CREATE FUNCTION public.make_interval(secs integer) RETURNS interval LANGUAGE plpgsql AS
		$$ BEGIN PERFORM public.trap('make_interval'); RETURN pg_catalog.make_interval(secs => secs); END $$;
	CREATE FUNCTION public.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS
		$$ BEGIN PERFORM public.trap('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
	CREATE FUNCTION public.text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS
		$$ BEGIN PERFORM public.trap('='); RETURN pg_catalog.texteq(a, b); END $$;
	CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);
	CREATE FUNCTION public.int8_eq(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql AS
		$$ BEGIN PERFORM public.trap('= bigint'); RETURN pg_catalog.int8eq(a, b); END $$;
	CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.int8_eq);
});
# the database's settings: any owner may plant these
as_dbo(qq{
	ALTER DATABASE $db SET search_path = public, pg_catalog;
	ALTER DATABASE $db SET lock_timeout = '1ms';
	ALTER DATABASE $db SET statement_timeout = '5ms';
	ALTER DATABASE $db SET idle_in_transaction_session_timeout = '1ms';
	ALTER DATABASE $db SET default_transaction_read_only = on;
	ALTER DATABASE $db SET default_transaction_isolation = 'serializable';
	ALTER DATABASE $db SET plan_cache_mode = 'force_custom_plan';
	ALTER DATABASE $db SET transform_null_equals = on;
	ALTER DATABASE $db SET row_security = off;
	ALTER DATABASE $db SET jit = on;
	ALTER DATABASE $db SET jit_above_cost = 0;
	ALTER DATABASE $db SET exit_on_error = on;
	ALTER DATABASE $db SET role = dbo;
	ALTER DATABASE $db SET session_authorization = dbo;
});
# the role's settings and the server's: what a superuser could get wrong
$node->safe_psql('postgres', qq{
	ALTER ROLE "$super" IN DATABASE $db SET session_replication_role = replica;
	ALTER ROLE "$super" IN DATABASE $db SET statement_timeout = '2ms';
	ALTER ROLE "$super" SET lock_timeout = '1ms';
	ALTER ROLE "$super" SET default_transaction_read_only = on;});

my $seed = guest_seed();
push @{ $seed->{chargebee}{customers} }, { id => 'cb_s1', email => 's1@example.com', age_days => 40 };
push @{ $seed->{chargebee}{events} }, { id => 'ev_s1', event_type => 'payment_succeeded', age_days => 3,
	content => { customer => { id => 'cb_s1' }, transaction => { id => 'txn_s1', customer_id => 'cb_s1',
		amount => 100, currency_code => 'EUR', status => 'success', type => 'payment' } } };
my $stripe = stripe_seed('s', 4);
$seed->{stripe}{$_} = $stripe->{stripe}{$_} for keys %{ $stripe->{stripe} };
fake_reset();
fake_seed($seed);

# round: repairs on every path while the traps are set
sub round
{
	my ($label, $n) = @_;
	my $pid = worker_pid($node);
	my $stripe_user = "s$n";
	my @ids = (
		$node->safe_psql($db, qq{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-$stripe_user',
			'stripe', customer_id => 'cus_$stripe_user', signup_via_api => true)}),
		$node->safe_psql($db, qq{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-api-$n',
			'cello_api', email => 'api\@example.com')}));
	push @ids, $node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-cb',
		'chargebee', customer_id => 'cb_s1')}) if $n == 1;
	$node->safe_psql($db, qq{SELECT celloattr.cello_transaction('user-api-$n', 'inv-$n', 49, 'EUR',
		pg_catalog.now() - interval '1 day', 'monthly', 'Team')});
	ok(wait_all_final($node, 60), "$label: every repair ended");
	is($node->safe_psql($db, "SELECT string_agg(state, ',' ORDER BY id) FROM celloattr.attributions WHERE id IN ("
		  . join(',', @ids) . ')'), join(',', ('done') x @ids), "$label: every repair done");
	is(cello_events()->{"invoice-paid user-api-$n inv-$n"}, 1, "$label: the Cello transaction sent once");
	is($node->safe_psql($db, q{SELECT string_agg(DISTINCT fn || ' by ' || backend, ', ') FROM public.called
		 WHERE backend = 'celloattr worker'}), '', "$label: the worker ran none of the owner's functions");
	is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'dbo'}), 'f',
		"$label: the database owner is no superuser");
	check_guest($node, $pid, $label);
}

# a new worker connects with the planted settings
my $old = worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old)");
wait_for_new_worker($node, $old);
round('planted at connection', 1);

# an ERROR (a cancel) under the planted exit_on_error: the worker recovers
my $pid = worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
sleep 1.5;
is(worker_pid($node), $pid, 'a cancel under the database\'s exit_on_error: the worker did not exit');

# the server's file, read again on SIGHUP
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET search_path = 'public, pg_catalog';
	ALTER SYSTEM SET lock_timeout = '1ms';
	ALTER SYSTEM SET session_replication_role = 'replica';
	ALTER SYSTEM SET default_transaction_isolation = 'serializable';
	SELECT pg_reload_conf()});
sleep 1;
round('planted in postgresql.conf and reloaded', 2);

# an application holds a queued attribution's row while these settings stand
$node->safe_psql('postgres', 'ALTER SYSTEM SET celloattr.paused = on; SELECT pg_reload_conf()');
sleep 0.5;
my $held = $node->safe_psql($db,
	q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s3', 'stripe', customer_id => 'cus_s3')});
my $locker = $node->background_psql($db);
$locker->query_safe("BEGIN; SELECT id FROM celloattr.attributions WHERE id = $held FOR UPDATE");
$node->safe_psql('postgres', 'ALTER SYSTEM RESET celloattr.paused; SELECT pg_reload_conf()');
my $other = $node->safe_psql($db,
	q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s4', 'stripe', customer_id => 'cus_s4')});
is($node->safe_psql($db, "SELECT celloattr.wait($other, '30 s')"), 'done',
	'a held row: other work goes on under a planted lock_timeout');
$locker->query_safe('COMMIT');
$locker->quit;
is($node->safe_psql($db, "SELECT celloattr.wait($held, '30 s')"), 'done', 'a held row: done once let go');

check_at_most_once('settings');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET ALL; SELECT pg_reload_conf()});
$node->stop;
done_testing();
