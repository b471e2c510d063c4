# t/038_sql_ascii.pl: the checks of cello_attribute() in an SQL_ASCII
# database, which stores any bytes: characters are counted and shown as
# UTF-8 (what the providers will read), never cut in half, and a control
# byte is found even behind a malformed character.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use CelloattrTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = celloattr_node('sql_ascii', "celloattr.paused = on\n");
$node->safe_psql('postgres',
	q{CREATE DATABASE bytes ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
$node->safe_psql('bytes', 'CREATE EXTENSION celloattr');

sub error_of
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $node->psql('bytes', $sql);
	return $err;
}

my $err = error_of(q{SELECT celloattr.cello_attribute('pNRB1aYqArN', 'a' || repeat('é', 500), 'stripe')});
like($err, qr/new_user_id "a(?:\xC3\xA9){59}\.\.\." is too long/, 'a long UTF-8 value: counted and shown by characters');
like($err, qr/It has 501 characters; at most 500 fit/, 'a long UTF-8 value: 501 characters, not 1,001 bytes');
# (it is queued: the only warning says no worker serves this database)
unlike(error_of(q{SELECT celloattr.cello_attribute('pNRB1aYqArN', repeat('é', 500), 'stripe')}), qr/ERROR/,
	'500 characters of two bytes each fit');

$err = error_of(q{SELECT celloattr.cello_attribute('pNRB1aYqArN', E'ab\xE0\x0Dcd', 'stripe')});
like($err, qr/new_user_id "ab\\xE0\\x0Dcd" contains a control character/,
	'a control byte behind a malformed character: found, both shown as bytes');
like($err, qr/Byte 0x0D at position 4/, 'its position');

$node->stop;
done_testing();
