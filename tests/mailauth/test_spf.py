"""check_host() against a real twisted.names server on loopback: results, limits, identities."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mailgate.mailauth.results import SPFResult
from mailgate.mailauth.spf import check_spf
from mailgate.net.dns import Lookups, make_resolver
from tests.support.fake_dns import FakeDNSServer

CLIENT = "192.0.2.10"
ZONE = {
    "ip.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
    "inc.test": {"TXT": ["v=spf1 include:ip.test -all"]},
    "inc-fail.test": {"TXT": ["v=spf1 include:closed.test ~all"]},
    "closed.test": {"TXT": ["v=spf1 -all"]},
    "inc-none.test": {"TXT": ["v=spf1 include:nospf.test -all"]},
    "nospf.test": {"A": ["192.0.2.99"]},
    "redir.test": {"TXT": ["v=spf1 redirect=ip.test"]},
    "redir-none.test": {"TXT": ["v=spf1 redirect=nospf.test"]},
    "mx.test": {"TXT": ["v=spf1 mx -all"], "MX": [(10, "mail.mx.test")]},
    "mail.mx.test": {"A": ["192.0.2.10"]},
    "a.test": {"TXT": ["v=spf1 a/24 -all"], "A": ["192.0.2.200"]},
    "exists.test": {"TXT": ["v=spf1 exists:%{ir}.allow.exists.test -all"]},
    "10.2.0.192.allow.exists.test": {"A": ["127.0.0.2"]},
    "ptr.test": {"TXT": ["v=spf1 ptr -all"]},
    "10.2.0.192.in-addr.arpa": {"PTR": ["host.ptr.test"]},
    "host.ptr.test": {"A": ["192.0.2.10"]},
    "voids.test": {"TXT": ["v=spf1 a:n1.voids.test a:n2.voids.test a:n3.voids.test -all"]},
    "two.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "bad.test": {"TXT": ["v=spf1 ip4:999.0.0.1 -all"]},
    "six.test": {"TXT": ["v=spf1 ip6:2001:db8::/32 -all"]},
    "inc-slow.test": {"TXT": ["v=spf1 include:slow.test -all"]},
    "helo.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
}


class SPFTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dns = FakeDNSServer(ZONE).start()
        self.addCleanup(self.dns.stop)
        self.dns.fail("slow.test", "timeout")
        self.lookups = Lookups(make_resolver([self.dns.nameserver], reactor, timeouts=(0.5,)), 0.5, reactor)

    async def spf(self, domain: str, ip: str = CLIENT, helo: str = "client.test") -> SPFResult:
        return await check_spf(self.lookups, ip, f"someone@{domain}", helo)

    async def assertResult(self, domain: str, word: str, ip: str = CLIENT) -> SPFResult:
        result = await self.spf(domain, ip)
        self.assertEqual(result.result, word, result)
        return result

    async def test_mechanisms(self) -> None:
        await self.assertResult("ip.test", "pass")
        await self.assertResult("ip.test", "fail", "198.51.100.1")
        await self.assertResult("inc.test", "pass")
        await self.assertResult("inc-fail.test", "softfail")  # a failing include does not match
        await self.assertResult("redir.test", "pass")
        await self.assertResult("mx.test", "pass")
        await self.assertResult("a.test", "pass")  # a/24: 192.0.2.200's network
        await self.assertResult("exists.test", "pass")
        await self.assertResult("exists.test", "fail", "192.0.2.11")
        await self.assertResult("ptr.test", "pass")
        await self.assertResult("six.test", "pass", "2001:db8::1")
        await self.assertResult("six.test", "fail")  # an IPv4 client never matches ip6
        await self.assertResult("ip.test", "pass", "::ffff:192.0.2.10")  # IPv4-mapped: the IPv4 address

    async def test_no_record_is_none_and_errors_are_errors(self) -> None:
        await self.assertResult("nospf.test", "none")
        await self.assertResult("nowhere.test", "none")  # NXDOMAIN
        self.assertEqual((await self.spf("localhost")).result, "none")  # not a domain to check
        await self.assertResult("two.test", "permerror")
        await self.assertResult("bad.test", "permerror")
        await self.assertResult("inc-none.test", "permerror")  # an include without SPF (RFC 7208 5.2)
        await self.assertResult("redir-none.test", "permerror")
        result = await self.assertResult("voids.test", "permerror")
        self.assertIn("void", result.reason)
        await self.assertResult("slow.test", "temperror")
        await self.assertResult("inc-slow.test", "temperror")

    async def test_the_helo_name_is_checked_for_the_null_sender(self) -> None:
        result = await check_spf(self.lookups, CLIENT, "", "helo.test")
        self.assertEqual((result.result, result.identity, result.value, result.domain),
                         ("pass", "helo", "helo.test", "helo.test"))
        self.assertEqual((await self.spf("ip.test", helo="helo.test")).identity, "mailfrom")
