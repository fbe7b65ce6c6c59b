# DKIM verification by Perl's Mail::DKIM (Debian libmail-dkim-perl), keys from the DNS server named on the
# command line: `perl mail_dkim_verify.pl HOST PORT < message`. One line per signature, "RESULT DOMAIN SELECTOR
# ALGORITHM", then "overall RESULT". Used by tests/support/dkim_verifiers.py.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;
my ($host, $port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => [$host], port => $port, recurse => 1,
    udp_timeout => 5, tcp_timeout => 5, retry => 1, persistent_udp => 0));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) { $line =~ s/\r?\n\z/\r\n/; $dkim->PRINT($line); }
$dkim->CLOSE;
foreach my $signature ($dkim->signatures) {
    print join(" ", $signature->result, $signature->domain // "", $signature->selector // "",
               $signature->algorithm // ""), "\n";
}
print "overall ", $dkim->result, "\n";
