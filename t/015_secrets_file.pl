# t/015_secrets_file.pl: the secrets file, as the worker reads it.
#
# The worker reads it at start and on each reload.  A file it refuses (group
# or world access, a syntax error, an unknown or repeated key, missing, not
# a regular file) is named in the log with the reason and the line, never
# with a value, and the worker goes on with the secrets it read before; a
# worker that never read one starts no step until a reload brings a good
# file.  Sections ([database] lines): the worker takes its own database's
# keys over the defaults (at the fake, by the key its requests carry),
# checks and ignores other databases' sections, and refuses a second
# section for a database and malformed headers, naming the line.  An empty
# celloattr.secrets_file runs without secrets.  A value left in a 1.0
# secret setting is refused, pointing to the file.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

my $node = celloattr_node('secrets_file');
my $db = $CelloattrTest::DB;
my $file = $node->data_dir . '/celloattr.secrets';
my $good = slurp_file($file);
my $key = test_secrets()->{stripe_secret_key};
my $NEW_KEY = "sk_test_new_#_'_key";

like(slurp_file($node->logfile),
	qr/celloattr worker read secrets file "celloattr.secrets": stripe_secret_key, chargebee_api_key, chargebee_webhook_username, chargebee_webhook_password, cello_access_key_id, cello_secret_access_key/,
	'the worker read the file at start, and says which keys it set');

# Reload; the log lines the reload wrote, once the worker has answered.
sub reload_log
{
	my ($until) = @_;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	my $deadline = time + 30;
	while (time < $deadline)
	{
		my $log = slurp_file($node->logfile, $offset);
		return $log if $log =~ $until;
		sleep 0.1;
	}
	return slurp_file($node->logfile, $offset);
}

fake_reset();
my $seed = stripe_seed('f', 9);
$seed->{stripe}{api_keys} = [$key];
fake_seed($seed);

my @refused = (
	[ 'mode 0644', "stripe_secret_key = 'sk_live_marker_0644'\n", 0644,
		qr/celloattr secrets file "celloattr.secrets" has group or world access/ ],
	[ 'mode 0640', "stripe_secret_key = 'sk_live_marker_0640'\n", 0640,
		qr/celloattr secrets file "celloattr.secrets" has group or world access/ ],
	[ 'a line with only a value', "# keys\nsk_live_marker_bare\n", 0600,
		qr/syntax error in celloattr secrets file "celloattr.secrets", line 2: expected key = 'value'/ ],
	[ 'an unknown key', "stripe_key_marker = 'sk_live_marker_unknown'\n", 0600,
		qr/unrecognized key in celloattr secrets file "celloattr.secrets", line 1/ ],
	[ 'an unterminated value', "stripe_secret_key = 'sk_live_marker_open\n", 0600,
		qr/line 1: unterminated quoted value/ ],
	[ 'text after the value', "stripe_secret_key = 'sk_live_marker_a' 'b'\n", 0600,
		qr/line 1: unexpected text after the value/ ],
	[ 'a key set twice', "stripe_secret_key = 'sk_live_marker_1'\n\nstripe_secret_key = 'sk_live_marker_2'\n",
		0600, qr/key "stripe_secret_key" is set twice in celloattr secrets file "celloattr.secrets", lines 1 and 3/ ],
	[ 'a control character', "stripe_secret_key = 'sk_live_marker\x01'\n", 0600,
		qr/line 1: the value holds a control character/ ],
	[ 'a missing file', undef, 0,
		qr/could not open celloattr secrets file "celloattr.secrets": No such file or directory/ ],
);
my $i = 0;
for my $case (@refused)
{
	my ($what, $text, $mode, $expect) = @$case;
	if (defined $text)
	{
		write_node_secrets($node, $text);
		chmod($mode, $file);
	}
	else
	{
		unlink($file);
	}
	my $log = reload_log(qr/keeps the secrets it read before/);
	like($log, $expect, "$what: refused, with the reason");
	like($log, qr/The worker keeps the secrets it read before/, "$what: the secrets read before stay");
	unlike($log, qr/marker/, "$what: no value in the log");
	is(attribute_one($node, 'f', ++$i), 'done', "$what: a repair with the key read before");
}
$node->safe_psql('postgres', q{ALTER SYSTEM SET celloattr.secrets_file = 'base'});
like(reload_log(qr/keeps the secrets/), qr/celloattr secrets file "base" is not a regular file/,
	'a directory is refused');

# a good file again, with a new key quoted as the format allows: comments,
# blank lines, a doubled quote, a bare value
$node->safe_psql('postgres', 'ALTER SYSTEM RESET celloattr.secrets_file');
(my $new = $good) =~ s/^stripe_secret_key = .*$/  stripe_secret_key='sk_test_new_#_''_key'   # rotated/m;
$new =~ s/^chargebee_api_key = '(.*)'$/\n\tchargebee_api_key = $1/m;
write_node_secrets($node, "# rotated\n\n$new");
like(reload_log(qr/read secrets file/),
	qr/celloattr worker read secrets file "celloattr.secrets": stripe_secret_key, chargebee_api_key,/,
	'a good file is read on reload');
fake_reset();
$seed = stripe_seed('g', 1);
$seed->{stripe}{api_keys} = [$NEW_KEY];
fake_seed($seed);
is(attribute_one($node, 'g', 1), 'done', 'the new key is used');
my @bearers = map { $_->{headers}{authorization} } @{ fake_requests('stripe') };
is($bearers[0], "Bearer $NEW_KEY", 'as the file spells it');

# Sections: a line [database] starts the keys of one database, over the
# defaults before the first section; other databases' sections are checked
# as strictly, then ignored.
my $SECTION_KEY = 'sk_test_section_key';
my $other = "[postgres]\nstripe_secret_key = 'sk_test_other_marker'\n";

# The state of one repair at a fake that accepts only the key $accept, and
# the keys its requests carried.
sub repair_with
{
	my ($prefix, $i, $accept) = @_;
	fake_reset();
	my $seed = stripe_seed($prefix, $i);
	$seed->{stripe}{api_keys} = [$accept];
	fake_seed($seed);
	my $state = attribute_one($node, $prefix, $i);
	my %bearers = map { $_->{headers}{authorization} => 1 } @{ fake_requests('stripe') };
	return join(' ', $state, sort keys %bearers);
}

{
	my $all = 'stripe_secret_key, chargebee_api_key, chargebee_webhook_username, '
	  . 'chargebee_webhook_password, cello_access_key_id, cello_secret_access_key';
	(my $rest = $all) =~ s/^stripe_secret_key, //;

	write_node_secrets($node, "$good\n[$db]\nstripe_secret_key = ''   # no Stripe here\n$other");
	my $log = reload_log(qr/read secrets file/);
	like($log, qr/read secrets file "celloattr.secrets": \Q$rest\E \(section \[$db\] sets no key\)/,
		"an empty value in the database's section unsets the default");

	write_node_secrets($node, "$good\n[$db]\n# nothing yet\n\n$other");
	$log = reload_log(qr/read secrets file/);
	like($log, qr/read secrets file "celloattr.secrets": \Q$all\E \(section \[$db\] sets no key\)/,
		'an empty section is allowed, and another database\'s section is ignored');
	is(repair_with('m', 1, $key), "done Bearer $key", 'the repair carried the default key');

	write_node_secrets($node, "$good\n$other");
	$log = reload_log(qr/read secrets file/);
	like($log, qr/read secrets file "celloattr.secrets": \Q$all\E \(no section \[$db\]\)/,
		'without a section of its own, the worker says so');

	# the section after another's and an odd quoted name, to be sure the
	# right one is taken; its name quoted, as names with blanks need
	write_node_secrets($node, "$good\n[\"$db\"]   # this database\n  stripe_secret_key = '$SECTION_KEY'\n\n"
		  . "[\"my \"\"odd\"\" db #1 [x]\"]\nstripe_secret_key = 'sk_test_odd_marker'\n$other");
	$log = reload_log(qr/read secrets file/);
	like($log, qr/read secrets file "celloattr.secrets": \Q$all\E \(from section \[$db\]: stripe_secret_key\)/,
		'the key of the database\'s section is read, and the log says so');
	unlike($log, qr/marker|\Q$SECTION_KEY\E/, 'no value in the log');
	is(repair_with('m', 2, $SECTION_KEY), "done Bearer $SECTION_KEY",
		'the repair carried the key of the database\'s section, not the default');

	my @bad_sections = (
		[ 'a second section for the database',
			"[$db]\nstripe_secret_key = 'sk_live_marker_1'\n[postgres]\n\n[\"$db\"]\n",
			qr/section \[$db\] is given twice in celloattr secrets file "celloattr.secrets", lines 1 and 5/ ],
		[ 'an unclosed header', "# sections\n[$db\nstripe_secret_key = 'sk_live_marker_2'\n",
			qr/syntax error in celloattr secrets file "celloattr.secrets", line 2: expected \] after the database name/ ],
		[ 'an empty header', "[]\nstripe_secret_key = 'sk_live_marker_3'\n",
			qr/line 1: expected a database name after \[/ ],
		[ 'a key on the header line', "[$db] stripe_secret_key = 'sk_live_marker_4'\n",
			qr/line 1: unexpected text after the section header/ ],
		[ 'an unterminated quoted name', "[\"$db]\nstripe_secret_key = 'sk_live_marker_5'\n",
			qr/line 1: unterminated quoted database name/ ],
		[ 'a name no database can have', '[' . ('x' x 64) . "]\n",
			qr/line 1: the database name is longer than 63 bytes/ ],
		[ "a key set twice in another database's section",
			"[postgres]\nstripe_secret_key = 'sk_live_marker_6'\nstripe_secret_key = 'sk_live_marker_7'\n",
			qr/key "stripe_secret_key" is set twice in celloattr secrets file "celloattr.secrets", lines 2 and 3/ ],
		[ "an unknown key in another database's section", "[postgres]\nstripe_key = 'sk_live_marker_8'\n",
			qr/unrecognized key in celloattr secrets file "celloattr.secrets", line 2/ ],
	);
	for my $case (@bad_sections)
	{
		my ($what, $text, $expect) = @$case;
		write_node_secrets($node, $text);
		$log = reload_log(qr/keeps the secrets it read before/);
		like($log, $expect, "$what: refused, with the line");
		like($log, qr/The worker keeps the secrets it read before/, "$what: the secrets read before stay");
		unlike($log, qr/marker/, "$what: no value in the log");
	}
	is(repair_with('m', 3, $SECTION_KEY), "done Bearer $SECTION_KEY",
		'after the refused files, the repair carried the section\'s key read before');
}

# no secrets file: the worker runs without secrets, and says so
$node->safe_psql('postgres', q{ALTER SYSTEM SET celloattr.secrets_file = ''});
like(reload_log(qr/without provider secrets/), qr/celloattr worker runs without provider secrets/,
	'an empty celloattr.secrets_file: no secrets');
fake_seed(stripe_seed('h', 1));
is(attribute_one($node, 'h', 1), 'failed', 'a repair fails without the key');
like($node->safe_psql($db, q{SELECT last_error FROM celloattr.attributions WHERE new_user_id = 'user-h1'}),
	qr/stripe_secret_key is not set in the secrets file \(celloattr.secrets_file\)/,
	'saying where the key belongs');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET celloattr.secrets_file');

# a worker that starts with a file it refuses starts no step
$node->stop;
write_node_secrets($node, $good);
chmod(0644, $file);
my $offset = -s $node->logfile;
$node->start;
my $pid = wait_for_new_worker($node, 0);
like(slurp_file($node->logfile, $offset),
	qr/has group or world access.*\n.*The worker starts no step until it can read the file; fix it and reload/,
	'a refused file at start: the worker says it starts no step');
fake_reset();
fake_seed(stripe_seed('s', 1));
my $id = $node->safe_psql($db,
	q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-s1', 'stripe', customer_id => 'cus_s1')});
sleep 2;
is($node->safe_psql($db, "SELECT state FROM celloattr.attributions WHERE id = $id"), 'queued',
	'the repair waits');
chmod(0600, $file);
like(reload_log(qr/read secrets file/), qr/read secrets file/, 'the reload reads the fixed file');
is($node->safe_psql($db, "SELECT celloattr.wait($id, '60 s')"), 'done', 'then the repair is done');
is(worker_pid($node), $pid, 'by the same worker');

# a value left in a setting of 1.0: refused, pointing to the file, not shown
$node->append_conf('postgresql.conf', "celloattr.stripe_secret_key = 'sk_live_marker_conf'\n");
my $log = reload_log(qr/contains errors/);
like($log, qr/provider secrets are no longer settings: the value of celloattr.stripe_secret_key is ignored/,
	'a 1.0 setting in postgresql.conf is refused on reload');
like($log, qr/HINT:  Move it to the secrets file named by celloattr.secrets_file, as stripe_secret_key = '...', and remove celloattr.stripe_secret_key from the configuration/,
	'pointing to the secrets file');
$offset = -s $node->logfile;
$node->restart;
wait_for_new_worker($node, 0);
$log = slurp_file($node->logfile, $offset);
like($log, qr/WARNING:  provider secrets are no longer settings: the value of celloattr.stripe_secret_key is ignored/,
	'and at start');
unlike($log, qr/marker/, 'the value is never in the log');
is($node->safe_psql($db, 'SHOW celloattr.stripe_secret_key'), '', 'the setting holds nothing');
my ($rc, $out, $err) = $node->psql($db, "ALTER SYSTEM SET celloattr.stripe_secret_key = 'sk_live_x'");
like($err, qr/the value of celloattr.stripe_secret_key is ignored.*\nHINT:  Move it to the secrets file/,
	'ALTER SYSTEM of a 1.0 secret setting is refused, pointing to the file');
unlike(slurp_file($node->data_dir . '/postgresql.auto.conf'), qr/stripe_secret_key/,
	'and nothing is written');

is(worker_crashes($node), 0, 'the worker never crashed');
$node->stop;
done_testing();
