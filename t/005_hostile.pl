# t/005_hostile.pl: hostile strings in every user-supplied value are either
# refused at the SQL call with a clear error (and nothing queued), or reach
# the provider byte for byte, with no extra parameter, header or path
# segment.
#
# Values go into SQL as hex-encoded UTF-8, so no quoting in this file can
# hide a bug; at the fake they are compared after its own (Rack-style)
# parsing of paths, queries and form bodies, and after its search parser.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use Encode qw(encode_utf8);
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('hostile');
my $db = $CelloattrTest::DB;

# Accepted everywhere: what form, URL and search encoding must carry intact.
my @hostile = (
	'a&b=c&metadata[cello_ucc]=EVIL',
	'x[y]z][',
	'100% +sure+%2B%20%',
	q{it's "quoted" `back`},
	'back\\slash\\\\ \\\' \\"',
	"emoji \x{1F600} \x{fc}n\x{ef}c\x{f6}d\x{e9} \x{4e2d}\x{6587} \x{5e2}\x{5d1}",
	'/path/../seg?q=1#frag',
	' spaced  out ',
	'semi;colon,comma:colon@at<lt>gt',
	"\x{e9}" x 251,    # multi-byte; with "cus_", the longest customer id
);

# A SQL expression for a Perl string, byte-exact.
sub lit
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	return "convert_from(decode('" . unpack('H*', encode_utf8($s)) . "', 'hex'), 'UTF8')";
}

# Emails may hold no spaces or commas: the hostile strings without them.
sub email_of
{
	my ($k) = @_;
	(my $local = $hostile[$k]) =~ s/[ ,;<>@]//g;
	return "e$k$local\@example.com";
}

fake_reset();
my (@customers);
for my $k (0 .. $#hostile)
{
	push @customers, { id => "cus_$hostile[$k]", metadata => {} };
	push @customers, { id => "cus_meta$k", metadata => { new_user_id => "m$hostile[$k]" } };
	push @customers, { id => "cus_mail$k", email => email_of($k), metadata => {} };
}
fake_seed({ stripe => { customers => \@customers, webhook_endpoints => [ { id => 'we_cello_test' } ] } });

# by id: the id in the path, the user and organization in the form;
# by metadata search; by email in the query
my %ids;
for my $k (0 .. $#hostile)
{
	my $h = lit($hostile[$k]);
	$ids{"id$k"} = $node->safe_psql($db, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', $h, 'stripe', customer_id => 'cus_' || $h,
		       organization_id => $h, name => $h, reason => $h)});
	$ids{"meta$k"} = $node->safe_psql($db, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'm' || $h, 'stripe')});
	$ids{"mail$k"} = $node->safe_psql($db, qq{
		SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-mail$k', 'stripe', email => ${\ lit(email_of($k)) })});
}
ok(wait_all_final($node, 120), 'every hostile repair ended');

my $customers = fake_state('stripe')->{customers};
my $requests = fake_requests('stripe');
my $tried = 0;
for my $k (0 .. $#hostile)
{
	my $h = $hostile[$k];
	my $show = substr($h, 0, 30);
	# user id, organization, customer id, name, reason, email, searched user id
	$tried += 7;
	is($node->safe_psql($db, "SELECT state || ' ' || coalesce(last_error, '') FROM celloattr.attributions WHERE id IN ($ids{\"id$k\"}, $ids{\"meta$k\"}, $ids{\"mail$k\"}) ORDER BY id"),
		"done \ndone \ndone ", "[$show]: found by id, by metadata search and by email, and repaired");
	my $m = $customers->{"cus_$h"}{metadata} // {};
	is_deeply($m, { cello_ucc => 'pNRB1aYqArN', new_user_id => $h, new_user_organization_id => $h },
		"[$show]: id in the path, user and organization in the form arrived byte-exact, nothing more");
	is($customers->{"cus_meta$k"}{metadata}{cello_ucc}, 'pNRB1aYqArN', "[$show]: the search found the customer by metadata");
	is($customers->{"cus_mail$k"}{metadata}{new_user_id}, "user-mail$k", "[$show]: the email query found the customer");
	is($node->safe_psql($db, qq{
			SELECT name = ${\ lit($h) } AND reason = ${\ lit($h) } FROM celloattr.attributions WHERE id = $ids{"id$k"}}),
		't', "[$show]: name and reason stored byte-exact");
}

# every request: known headers only, one path, the form's keys our own
my (%header_names, @bad_forms, @bad_paths);
for my $r (@$requests)
{
	$header_names{$_} = 1 for keys %{ $r->{headers} };
	push @bad_paths, "$r->{method} $r->{path}" unless $r->{spec_operation};
	next unless $r->{method} eq 'POST';
	my @keys = sort keys %{ $r->{form} // {} };
	my @allowed = grep { /^(metadata\[(cello_ucc|new_user_id|new_user_organization_id)\]|webhook_endpoint)$/ } @keys;
	push @bad_forms, "@keys" if @allowed != @keys || grep { @{ $r->{form}{$_} } != 1 } @keys;
}
is(join(',', sort keys %header_names),
	'accept,authorization,content-length,content-type,host,idempotency-key,user-agent',
	'no extra header in any request');
is("@bad_paths", '', 'every request routed to a Stripe operation (no extra path segment)');
is("@bad_forms", '', 'no extra or repeated form parameter');
is((grep { @{ $_->{spec_violations} // [] } } @$requests), 0, 'no request broke the Stripe spec');

# refused at the call: control characters, over-long values, a bad ucc;
# with a clear error and nothing queued
my $before = $node->safe_psql($db, 'SELECT count(*) FROM celloattr.jobs');
my @refused = (
	[ 'ucc', "ucc => 'pNRB1aYqAr&'", '22023' ],
	[ 'ucc', "ucc => 'pNRB1aYqArN '", '22001' ],
	[ 'ucc', "ucc => ${\ lit(qq{pNRB1a\x{e9}qArN}) }", '22023' ],
	[ 'new_user_id', "new_user_id => ${\ lit(qq{a\r\nX-Injected: 1}) }", '22023' ],
	[ 'new_user_id', "new_user_id => ${\ lit(qq{a\x01b}) }", '22023' ],
	[ 'new_user_id', "new_user_id => ${\ lit(qq{a\x7fb}) }", '22023' ],
	[ 'new_user_id', "new_user_id => ${\ lit('u' x 501) }", '22001' ],
	[ 'new_user_id', "new_user_id => ''", '22023' ],
	[ 'customer_id', "customer_id => ${\ lit(qq{cus_1\nHost: evil}) }", '22023' ],
	[ 'customer_id', "customer_id => ${\ lit('c' x 256) }", '22001' ],
	[ 'email', "email => ${\ lit(qq{a\@b.c\r\nBcc: x\@y.z}) }", '22023' ],
	[ 'email', "email => 'a b\@example.com'", '22023' ],
	[ 'email', "email => 'a\@b\@example.com'", '22023' ],
	[ 'email', "email => ${\ lit(('e' x 510) . '\@x.io') }", '22001' ],
	[ 'name', "name => ${\ lit(qq{Jane\x1b[31m}) }", '22023' ],
	[ 'name', "name => ${\ lit('n' x 257) }", '22001' ],
	[ 'organization_id', "organization_id => ${\ lit(qq{o\tx}) }", '22023' ],
	[ 'organization_id', "organization_id => ${\ lit(qq{\x{1F600}} x 501) }", '22001' ],
	[ 'reason', "reason => ${\ lit(qq{why\x1b}) }", '22023' ],
	[ 'reason', "reason => ${\ lit(qq{why\x07}) }", '22023' ],
	[ 'reason', "reason => ${\ lit('r' x 1001) }", '22001' ],
);
for my $case (@refused)
{
	my ($param, $arg, $sqlstate) = @$case;
	my $args = $arg =~ /^(ucc|new_user_id) =>/
	  ? ($param eq 'ucc' ? "$arg, new_user_id => 'u-refused'" : "ucc => 'pNRB1aYqArN', $arg")
	  : "ucc => 'pNRB1aYqArN', new_user_id => 'u-refused', $arg";
	my ($rc, $out, $err) = $node->psql($db,
		"\\set VERBOSITY verbose\nSELECT celloattr.cello_attribute($args, gateway => 'stripe')");
	$tried++;
	like($err, qr/ERROR:  $sqlstate: .*\Q$param\E/, "$param refused with $sqlstate: " . substr($arg, 0, 50));
}
is($node->safe_psql($db, 'SELECT count(*) FROM celloattr.jobs'), $before, 'nothing queued by a refused call');

# transactions: invoice id and product key are stored byte-exact or refused
$node->safe_psql($db, q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'tx-user', 'cello_api')});
for my $k (0 .. $#hostile)
{
	my $h = lit(substr($hostile[$k], 0, 200));
	$tried += 2;
	my $t = $node->safe_psql($db,
		"SELECT celloattr.cello_transaction('tx-user', $h, 9.99, 'EUR', now(), 'monthly', $h)");
	is($node->safe_psql($db, qq{
			SELECT invoice_id = $h AND product_key = $h FROM celloattr.transactions WHERE id = $t}),
		't', "transaction [" . substr($hostile[$k], 0, 30) . "]: invoice id and product key stored byte-exact");
}
for my $case ([ 'invoice_id', lit("in\r\n1"), lit('p') ], [ 'invoice_id', lit('i' x 256), lit('p') ],
	[ 'product_key', lit('in_x'), lit("p\x01") ], [ 'product_key', lit('in_y'), lit('p' x 256) ])
{
	my ($param, $inv, $prod) = @$case;
	my ($rc, $out, $err) = $node->psql($db,
		"SELECT celloattr.cello_transaction('tx-user', $inv, 1, 'EUR', now(), 'monthly', $prod)");
	$tried++;
	like($err, qr/ERROR: .*\Q$param\E/, "transaction $param refused");
}

note "hostile values tried (value x field): $tried";
is(worker_crashes($node), 0, 'the worker never crashed');
$node->stop;
done_testing();
