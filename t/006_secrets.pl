# t/006_secrets.pl: keys never leave the secrets file but for the requests
# they authenticate, and certificate checks hold.
#
# With the worker logging at debug5, repairs that succeed, fail on a
# provider that echoes the key back, and time out: no key in the server
# log, celloattr.http_log, the job rows, error messages or
# pg_stat_activity.  Then every SQL route to settings and files, as a
# member of pg_monitor, of pg_read_all_settings, the operator role, the
# owner of the worker's database and a role granted nothing: no key (nor
# one of another database's section of the file) in anything they read,
# whole catalog rows as text included, and no way to set one for a
# database or role, for a superuser neither.  With allow_http off, an https URL
# whose certificate is self-signed fails the step with a TLS error.  (The
# secrets file itself: t/015_secrets_file.pl.)

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

my $node = celloattr_node('secrets', "celloattr.max_attempts = 2\ncelloattr.request_timeout = 1s\n");
my $db = $CelloattrTest::DB;
my %secrets = %{ test_secrets() };
my @secrets = values %secrets;
is(scalar(@secrets), 6, 'the six keys of the secrets file');

# Where a secret shows in a text: the names of the ones found.
sub leaked
{
	my ($text) = @_;
	return join(' ', grep { index($text, $_) >= 0 } @secrets);
}

my $offset = -s $node->logfile;
$node->safe_psql('postgres', "ALTER SYSTEM SET log_min_messages = debug5; SELECT pg_reload_conf()");
sleep 0.5;

fake_reset();
fake_seed(stripe_seed('s', 4));
# a provider that echoes the key in its error, and one that stalls
fake_fault({ provider => 'stripe', method => 'GET', path_regex => '^/v1/customers/cus_s2$',
	action => 'status', status => 401, count => 0,
	body => { error => { type => 'invalid_request_error', message => "Invalid API Key provided: $secrets{stripe_secret_key}" } } });
fake_fault({ provider => 'stripe', method => 'GET', path_regex => '^/v1/customers/cus_s3$',
	action => 'stall', seconds => 3, count => 0 });
queue_stripe($node, 's', 3);
my $activity = '';
for (1 .. 20)
{
	$activity .= $node->safe_psql('postgres', 'SELECT string_agg(coalesce(query, \'\'), \' \') FROM pg_stat_activity');
	sleep 0.1;
}
ok(wait_all_final($node, 60), 'repairs ended');
$node->safe_psql('postgres', "ALTER SYSTEM RESET log_min_messages; SELECT pg_reload_conf()");

is($node->safe_psql($db, q{SELECT string_agg(state, ' ' ORDER BY new_user_id) FROM celloattr.attributions}),
	'done failed failed', 'one repaired, one refused by the provider, one timed out');
like($node->safe_psql($db, q{SELECT last_error FROM celloattr.attributions WHERE new_user_id = 'user-s2'}),
	qr/Invalid API Key provided: \[redacted\]/, 'the echoed key is redacted in the error');
is(leaked($node->safe_psql($db, q{
		SELECT string_agg(concat_ws(' ', url, request_headers, request_body, response_body, error), ' ')
		  FROM celloattr.http_log})), '', 'no key in celloattr.http_log');
is(leaked($node->safe_psql($db, q{
		SELECT string_agg(concat_ws(' ', payload, last_error, result, idempotency_key), ' ')
		  FROM celloattr.jobs})
		. $node->safe_psql($db, q{SELECT string_agg(concat_ws(' ', last_error, plan), ' ') FROM celloattr.attributions})),
	'', 'no key in the job or attribution rows');
is(leaked($activity), '', 'no key in pg_stat_activity');
my $log = slurp_file($node->logfile, $offset);
cmp_ok(scalar(() = $log =~ /DEBUG/g), '>', 100, 'the server log was written at debug level');
is(leaked($log), '', 'no key in the server log at debug5');

# Every route to settings and files, for roles a monitoring agent, an
# operator, a database owner or nobody in particular has.
my $file = $node->data_dir . '/celloattr.secrets';
my $section_secret = 'sk_test_only_in_a_section_5150';
write_node_secrets($node, slurp_file($file) . "\n[postgres]\nstripe_secret_key = '$section_secret'\n");
$offset = -s $node->logfile;
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
my $deadline = time + 30;
sleep 0.1
  until slurp_file($node->logfile, $offset) =~ /read secrets file.*\(no section \[$db\]\)/ || time > $deadline;
$node->safe_psql('postgres', qq{
	CREATE ROLE plain LOGIN;
	CREATE ROLE monitor LOGIN IN ROLE pg_monitor;
	CREATE ROLE settings_reader LOGIN IN ROLE pg_read_all_settings;
	CREATE ROLE operator LOGIN IN ROLE celloattr_operator;
	CREATE ROLE db_owner LOGIN;
	ALTER DATABASE $db OWNER TO db_owner;});
my @routes = (
	(map { ("SHOW celloattr.$_;", "SELECT current_setting('celloattr.$_', true);") }
		sort keys %secrets),
	'SHOW ALL;',
	'SELECT s::text FROM pg_settings s;',
	'SELECT f::text FROM pg_file_settings f;',
	'SELECT d::text FROM pg_db_role_setting d;',
	"SELECT pg_read_file('celloattr.secrets');",
	"SELECT pg_read_file('$file');",
	"SELECT pg_read_binary_file('celloattr.secrets');",
	"SELECT * FROM pg_stat_file('celloattr.secrets');",
	"SELECT pg_ls_dir('.');",
	"CREATE TEMP TABLE f (line text); COPY f FROM '$file'; SELECT * FROM f;",
	"SELECT lo_import('$file');",
	"SELECT query FROM pg_stat_activity WHERE backend_type LIKE 'celloattr%';",
	"SELECT * FROM celloattr.http_log;",
	"ALTER DATABASE $db SET celloattr.stripe_secret_key = '$secrets{stripe_secret_key}';",
	"ALTER DATABASE postgres SET celloattr.stripe_secret_key = '$secrets{stripe_secret_key}';",
	"ALTER ROLE CURRENT_USER SET celloattr.stripe_secret_key = '$secrets{stripe_secret_key}';",
	"ALTER DATABASE $db SET celloattr.secrets_file = '/tmp/elsewhere';",
	"ALTER ROLE CURRENT_USER IN DATABASE $db SET celloattr.secrets_file = '/tmp/elsewhere';");
my $sql = join("\n", @routes);
for my $role (qw(plain monitor settings_reader operator db_owner))
{
	my ($out, $err);
	$node->psql($db, $sql, stdout => \$out, stderr => \$err, on_error_stop => 0,
		extra_params => [ '-U', $role ]);
	# the value in the ALTER statements comes back only in the echo of the statement
	(my $said = "$out\n$err") =~ s/^(STATEMENT|LINE \d+):.*$//mg;
	is(leaked($said), '', "$role: no key through any route");
	unlike($said, qr/\Q$section_secret\E/, "$role: nor the key of another database's section");
	like($err, qr/permission denied for function pg_read_file/, "$role: pg_read_file denied");
	like($err, qr/permission denied for function pg_stat_file/, "$role: pg_stat_file denied");
	# (the second wording is 16's and later)
	like($err, qr/must be superuser or have privileges of the pg_read_server_files role to COPY from a file|permission denied to COPY from a file\nDETAIL:  Only roles with privileges of the "pg_read_server_files" role may COPY from a file/,
		"$role: COPY from the file denied");
	is(() = $err =~ /(permission denied to set parameter|cannot be changed now|must be owner of database)/g, 5,
		"$role: no secret or secrets file set for a database or role");
}
# the routes are not blind: a superuser reads the file through them
my ($out, $err);
$node->psql($db, "SELECT pg_read_file('celloattr.secrets');", stdout => \$out, stderr => \$err);
is(leaked($out), join(' ', @secrets), 'a superuser reads the secrets file');
# nor does a superuser put a key in a setting of a database or role: the
# 1.0 names are reloadable settings (PGC_SIGHUP), which PostgreSQL refuses
# there before their check hook is asked
$node->psql($db, join("\n",
		"ALTER DATABASE $db SET celloattr.stripe_secret_key = '$secrets{stripe_secret_key}';",
		"ALTER DATABASE postgres SET celloattr.stripe_secret_key = '$secrets{stripe_secret_key}';",
		"ALTER ROLE CURRENT_USER SET celloattr.stripe_secret_key = '$secrets{stripe_secret_key}';"),
	stderr => \$err, on_error_stop => 0);
is(() = $err =~ /ERROR:  parameter "celloattr.stripe_secret_key" cannot be changed now/g, 3,
	'ALTER DATABASE and ALTER ROLE SET of a key refused for a superuser too');
is($node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ' ') LIKE '%celloattr%'}),
	0, 'pg_db_role_setting holds no celloattr setting');

# a superuser alone may point the worker elsewhere
my ($rc, $out, $err) = $node->psql($db, q{
	CREATE ROLE app_only LOGIN IN ROLE celloattr_app;
	SET ROLE app_only;
	SET celloattr.stripe_api_url = 'http://attacker.example';});
like($err, qr/ERROR:  (permission denied|parameter "celloattr.stripe_api_url" cannot be changed now)/,
	'an application role cannot change a base URL');

# certificate checks: an https server with a self-signed certificate
my $dir = PostgreSQL::Test::Utils::tempdir;
system_or_bail('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
	'-subj', '/CN=127.0.0.1', '-keyout', "$dir/key.pem", '-out', "$dir/cert.pem");
my $tls_port = PostgreSQL::Test::Cluster::get_free_port();
my $server = IPC::Run::start(
	[ 'python3', '-c', <<'PY', $tls_port, "$dir/cert.pem", "$dir/key.pem" ],
import http.server, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.BaseHTTPRequestHandler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
PY
	'>', "$dir/server.log", '2>&1');
$node->safe_psql('postgres', qq{
	ALTER SYSTEM SET celloattr.allow_http = off;
	ALTER SYSTEM SET celloattr.stripe_api_url = 'https://127.0.0.1:$tls_port/stripe';
	SELECT pg_reload_conf();});
sleep 0.5;
my $state = attribute_one($node, 's', 4);
my $error = $node->safe_psql($db, q{
	SELECT j.last_error FROM celloattr.jobs j JOIN celloattr.attributions a ON a.id = j.attribution_id
	 WHERE a.new_user_id = 'user-s4' AND a.superseded_by IS NULL AND j.state = 'failed'});
is($state, 'failed', 'https with a self-signed certificate: the repair failed');
like($error, qr/SSL certificate|certificate verify/i, 'with a TLS error');

$node->safe_psql('postgres', qq{
	ALTER SYSTEM SET celloattr.stripe_api_url = 'http://127.0.0.1:$tls_port/stripe';
	SELECT pg_reload_conf();});
sleep 0.5;
$node->safe_psql($db, q{SELECT celloattr.retry(id) FROM celloattr.attributions WHERE new_user_id = 'user-s4'});
$node->poll_query_until($db, q{SELECT state = 'failed' FROM celloattr.attributions WHERE new_user_id = 'user-s4'});
like($node->safe_psql($db, q{SELECT last_error FROM celloattr.attributions WHERE new_user_id = 'user-s4'}),
	qr/refusing plain http/, 'plain http refused while allow_http is off');
$server->kill_kill;

is(worker_crashes($node), 0, 'the worker never crashed');
$node->stop;
done_testing();
