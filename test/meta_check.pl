#!/usr/bin/perl
# test/meta_check.pl TOP "15 17 18": META.json is valid against the PGXN
# Meta Spec 1.0.0 (https://pgxn.org/spec/: its mandatory fields, their
# types and terms, the license strings, the prereq phases and relations,
# custom keys only as x_/X_), and says what the rest of the tree says: the
# version of the control file, the library and debian/changelog, the files
# it names, and the oldest PostgreSQL of the tested versions, which are
# also debian/pgversions'.  Prints one line per problem; exit 1 if any.
use strict;
use warnings;
use JSON::PP;

my ($top, $tested) = @ARGV;
my @problems;
sub slurp { open my $f, '<', "$top/$_[0]" or die "$_[0]: $!"; local $/; return <$f>; }
my $meta = eval { decode_json(slurp('META.json')) };
if (!$meta) { print "META.json is not JSON: $@"; exit 1; }

my $semver = qr/^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$/;
my $term = qr/^[^\s\/\\\x00-\x1f]{2,}$/;
my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd
  freebsd gfdl_1_2 gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1
  openssl perl_5 postgresql qpl_1_0 ssleay sun zlib open_source restricted unrestricted unknown);
my %known = map { $_ => 1 } qw(name abstract description version maintainer license provides
  prereqs meta-spec release_status tags resources generated_by no_index);

for my $key (qw(name abstract version maintainer license provides meta-spec))
{
	push @problems, "mandatory field $key is missing" unless exists $meta->{$key};
}
for my $key (sort keys %$meta)
{
	push @problems, "unknown field $key (custom fields start with x_)"
	  unless $known{$key} || $key =~ /^[xX]_/;
}
push @problems, "meta-spec version is not 1.0.0" unless ($meta->{'meta-spec'}{version} // '') eq '1.0.0';
push @problems, "name is not a term" unless ($meta->{name} // '') =~ $term;
push @problems, "version is not a semantic version" unless ($meta->{version} // '') =~ $semver;
for my $m (ref $meta->{maintainer} ? @{ $meta->{maintainer} } : ($meta->{maintainer}))
{
	push @problems, "maintainer is not a string" unless defined $m && !ref $m && length $m;
}
my $license = $meta->{license};
push @problems, "license is not one of the spec's strings"
  unless !ref $license && $licenses{ $license // '' };
for my $ext (sort keys %{ $meta->{provides} // {} })
{
	my $p = $meta->{provides}{$ext};
	push @problems, "provides $ext: file is missing" unless $p->{file} && -f "$top/$p->{file}";
	push @problems, "provides $ext: version is not a semantic version" unless ($p->{version} // '') =~ $semver;
	push @problems, "provides $ext: docfile is missing" if exists $p->{docfile} && !-f "$top/$p->{docfile}";
}
for my $phase (sort keys %{ $meta->{prereqs} // {} })
{
	push @problems, "prereqs: unknown phase $phase" unless $phase =~ /^(configure|build|test|runtime|develop)$/;
	for my $rel (sort keys %{ $meta->{prereqs}{$phase} })
	{
		push @problems, "prereqs $phase: unknown relation $rel" unless $rel =~ /^(requires|recommends|suggests|conflicts)$/;
		while (my ($name, $v) = each %{ $meta->{prereqs}{$phase}{$rel} })
		{
			push @problems, "prereqs $phase $rel $name: not a version" unless $v eq '0' || $v =~ $semver
			  || $v =~ /^\s*(?:[<>]=?|==|!=)?\s*\d+\.\d+\.\d+(\s*,\s*(?:[<>]=?|==|!=)?\s*\d+\.\d+\.\d+)*\s*$/;
		}
	}
}
push @problems, "release_status is not stable, testing or unstable"
  if exists $meta->{release_status} && $meta->{release_status} !~ /^(stable|testing|unstable)$/;
for my $tag (@{ $meta->{tags} // [] })
{
	push @problems, "tag '$tag' is not a tag" unless length($tag) <= 255 && $tag !~ /[\/\\\x00-\x1f]/;
}

# What the rest of the tree says.
my ($default) = slurp('celloattr.control') =~ /^default_version = '([^']+)'/m;
my ($library) = slurp('src/common/celloattr.h') =~ /#define CELLOATTR_VERSION "([^"]+)"/;
my ($package) = slurp('debian/changelog') =~ /^celloattr \(([^-)]+)/;
for ([ 'celloattr.control default_version', $default ], [ 'CELLOATTR_VERSION', $library ],
	[ 'debian/changelog', $package ], [ 'provides celloattr', $meta->{provides}{celloattr}{version} =~ s/\.0$//r ])
{
	push @problems, "$_->[0] says $_->[1], META.json $meta->{version}"
	  unless ($_->[1] // '') . '.0' eq $meta->{version} || ($_->[1] // '') eq $meta->{version};
}
push @problems, "provides celloattr: file is not the script of version $default"
  unless $meta->{provides}{celloattr}{file} eq "celloattr--$default.sql";
my ($oldest) = sort { $a <=> $b } split ' ', $tested;
push @problems, "prereqs: PostgreSQL is not $oldest.0.0, the oldest version tested"
  unless ($meta->{prereqs}{runtime}{requires}{PostgreSQL} // '') eq "$oldest.0.0";
my $pgversions = join ' ', grep { /\S/ } split /\n/, slurp('debian/pgversions');
push @problems, "debian/pgversions ($pgversions) are not the versions tested ($tested)"
  unless $pgversions eq $tested;

print "$_\n" for @problems;
exit(@problems ? 1 : 0);
