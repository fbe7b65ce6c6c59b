"""MX and address resolution against a real twisted.names server over loopback UDP."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailgate.net.dns import (
    CachingResolver,
    LookupFailed,
    Lookups,
    MXResolver,
    NoSuchName,
    PermanentDNSError,
    TemporaryDNSError,
    ip_literal,
    lookup_addresses,
    lookup_mx,
    lookup_ptr,
    lookup_txt,
    make_resolver,
    parse_nameserver,
)
from mailgate.core.errors import DeliveryError
from tests.support.fake_dns import FakeDNSServer

ZONE = {
    "remote.test": {"MX": [(20, "mx3.remote.test"), (10, "mx1.remote.test"), (10, "mx2.remote.test")]},
    "mx1.remote.test": {"A": ["127.0.0.2"]},
    "mx2.remote.test": {"A": ["127.0.0.3", "127.0.0.4"], "AAAA": ["::1"]},
    "mx3.remote.test": {"AAAA": ["::1"]},
    "nomx.test": {"A": ["127.0.0.5"]},
    "alias.test": {"CNAME": "remote.test"},
}


class ResolverTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.server = FakeDNSServer(ZONE).start()
        self.addCleanup(self.server.stop)
        self.shuffled: list[list[str]] = []
        self.mx = MXResolver(
            make_resolver([self.server.nameserver], reactor, timeouts=(0.3,)),
            shuffle=self._reverse,
        )

    def _reverse(self, group: list[str]) -> None:
        self.shuffled.append(list(group))
        group.reverse()

    async def _error(self, awaitable: object) -> DeliveryError:
        try:
            await awaitable  # type: ignore[misc]
        except DeliveryError as error:
            return error
        self.fail("no DeliveryError raised")

    async def test_mx_by_preference_with_equal_ones_shuffled(self) -> None:
        """Lowest preference first; the injected shuffle reorders the 10s only."""
        self.assertEqual(
            await self.mx.mx_hosts("Remote.Test."),
            ["mx2.remote.test", "mx1.remote.test", "mx3.remote.test"],
        )
        self.assertIn(["mx1.remote.test", "mx2.remote.test"], self.shuffled)
        self.assertEqual(self.server.queries, [("remote.test", "MX")])

    async def test_real_shuffle_keeps_groups(self) -> None:
        mx = MXResolver(make_resolver([self.server.nameserver], reactor, timeouts=(0.3,)))
        hosts = await mx.mx_hosts("remote.test")
        self.assertEqual(sorted(hosts[:2]), ["mx1.remote.test", "mx2.remote.test"])
        self.assertEqual(hosts[2], "mx3.remote.test")

    async def test_no_mx_is_implicit_mx(self) -> None:
        """RFC 5321 5.1: no MX records, the domain itself is the mail host."""
        self.assertEqual(await self.mx.mx_hosts("nomx.test"), ["nomx.test"])

    async def test_only_cname_is_implicit_mx(self) -> None:
        self.assertEqual(await self.mx.mx_hosts("alias.test"), ["alias.test"])

    async def test_null_mx_is_permanent(self) -> None:
        """RFC 7505: 'MX 0 .' means no mail, at once, 556 5.1.10."""
        self.server.null_mx("nullmx.test")
        error = await self._error(self.mx.mx_hosts("nullmx.test"))
        self.assertIsInstance(error, PermanentDNSError)
        self.assertEqual((error.code, error.enhanced), (556, "5.1.10"))
        self.assertTrue(error.permanent)

    async def test_nxdomain_is_permanent(self) -> None:
        error = await self._error(self.mx.mx_hosts("nowhere.test"))
        self.assertIsInstance(error, PermanentDNSError)
        self.assertEqual((error.code, error.enhanced), (550, "5.1.2"))

    async def test_servfail_is_temporary(self) -> None:
        self.server.fail("remote.test", "servfail")
        error = await self._error(self.mx.mx_hosts("remote.test"))
        self.assertIsInstance(error, TemporaryDNSError)
        self.assertEqual((error.code, error.enhanced), (451, "4.4.3"))
        self.assertFalse(error.permanent)

    async def test_refused_is_temporary(self) -> None:
        self.server.fail("remote.test", "refused")
        self.assertIsInstance(await self._error(self.mx.mx_hosts("remote.test")), TemporaryDNSError)

    async def test_timeout_is_temporary(self) -> None:
        self.server.fail("remote.test", "timeout")
        error = await self._error(self.mx.mx_hosts("remote.test"))
        self.assertIsInstance(error, TemporaryDNSError)
        self.assertIn("timeout", error.reason)

    async def test_addresses_ipv4_first(self) -> None:
        self.assertEqual(await self.mx.addresses("mx2.remote.test"), ["127.0.0.3", "127.0.0.4", "::1"])
        self.assertEqual(await self.mx.addresses("mx3.remote.test"), ["::1"])

    async def test_address_of_unknown_host_is_permanent(self) -> None:
        error = await self._error(self.mx.addresses("ghost.remote.test"))
        self.assertIsInstance(error, PermanentDNSError)

    async def test_host_without_addresses_is_permanent(self) -> None:
        error = await self._error(self.mx.addresses("alias.test"))
        self.assertIsInstance(error, PermanentDNSError)
        self.assertEqual(error.enhanced, "5.4.4")

    async def test_address_timeout_is_temporary(self) -> None:
        self.server.fail("mx1.remote.test", "timeout")
        self.assertIsInstance(await self._error(self.mx.addresses("mx1.remote.test")), TemporaryDNSError)

    async def test_literals_skip_dns(self) -> None:
        self.assertEqual(await self.mx.mx_hosts("[127.0.0.9]"), ["[127.0.0.9]"])
        self.assertEqual(await self.mx.addresses("[127.0.0.9]"), ["127.0.0.9"])
        self.assertEqual(await self.mx.addresses("127.0.0.9"), ["127.0.0.9"])
        self.assertEqual(await self.mx.addresses("[IPv6:::1]"), ["::1"])
        self.assertEqual(self.server.queries, [])


class ParsingTests(SynchronousTestCase):
    def test_nameserver_entries(self) -> None:
        self.assertEqual(parse_nameserver("127.0.0.1"), ("127.0.0.1", 53))
        self.assertEqual(parse_nameserver("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_nameserver("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parse_nameserver("::1"), ("::1", 53))

    def test_ip_literal(self) -> None:
        self.assertEqual(ip_literal("[192.0.2.1]"), "192.0.2.1")
        self.assertIsNone(ip_literal("example.test"))
        self.assertIsNone(ip_literal("[example.test]"))

    def test_system_resolver_builds(self) -> None:
        from twisted.internet.task import Clock

        resolver = make_resolver([], Clock())
        self.assertTrue(hasattr(resolver, "lookupMailExchange"))


AUTH_ZONE = {
    "txt.test": {"TXT": ["v=spf1 -all", "x" * 300]},  # the second: two character-strings in one record
    "alias-txt.test": {"CNAME": "txt.test"},
    "empty.test": {"A": ["192.0.2.1"]},
    "mail.test": {"MX": [(20, "b.mail.test"), (10, "a.mail.test")]},
    "7.2.0.192.in-addr.arpa": {"PTR": ["host.mail.test"]},
    "slow.test": {},
}


class AuthenticationLookupTests(TestCase):
    """The lookups of the SPF, DKIM and DMARC checks: NXDOMAIN, no data and a timeout told apart."""

    timeout = 20

    def setUp(self) -> None:
        self.server = FakeDNSServer(AUTH_ZONE).start()
        self.addCleanup(self.server.stop)
        self.server.fail("slow.test", "timeout")
        self.lookups = Lookups(make_resolver([self.server.nameserver], reactor, timeouts=(0.3,)), 0.3, reactor)

    def txt(self, name: str) -> Deferred:
        return Deferred.fromCoroutine(lookup_txt(self.lookups, name))

    async def test_txt_records_joined_per_record_and_cnames_followed(self) -> None:
        self.assertEqual(await self.txt("txt.test"), [b"v=spf1 -all", b"x" * 300])
        self.assertEqual(await self.txt("alias-txt.test"), [b"v=spf1 -all", b"x" * 300])

    async def test_no_data_nxdomain_and_timeout_differ(self) -> None:
        self.assertEqual(await self.txt("empty.test"), [])
        with self.assertRaises(NoSuchName):
            await self.txt("nowhere.test")
        started = reactor.seconds()
        with self.assertRaises(LookupFailed):
            await self.txt("slow.test")
        self.assertLess(reactor.seconds() - started, 2.0)  # one timeout, not Twisted's 60 s schedule

    async def test_mx_addresses_and_ptr(self) -> None:
        lookups = self.lookups
        self.assertEqual(await lookup_mx(lookups, "mail.test"), ["a.mail.test", "b.mail.test"])
        self.assertEqual(await lookup_addresses(lookups, "empty.test", False), ["192.0.2.1"])
        self.assertEqual(await lookup_ptr(lookups, "192.0.2.7"), ["host.mail.test"])


class CachingResolverTests(TestCase):
    """The checks' answers kept for their TTL: a second message from a sender asks DNS nothing."""

    timeout = 20

    def setUp(self) -> None:
        self.server = FakeDNSServer(AUTH_ZONE).start()  # TTL 60 s
        self.addCleanup(self.server.stop)
        self.server.fail("slow.test", "timeout")
        self.clock = Clock()
        self.resolver = CachingResolver(make_resolver([self.server.nameserver], reactor, timeouts=(0.3,)), self.clock)

    def txt(self, name: str) -> Deferred:
        return Deferred.fromCoroutine(lookup_txt(Lookups(self.resolver, 0.3, reactor), name))

    def asked(self, name: str) -> int:
        return sum(1 for asked_name, _ in self.server.queries if asked_name == name)

    async def test_answers_and_nxdomain_are_kept_for_their_ttl_failures_never(self) -> None:
        for _ in range(3):
            self.assertEqual(await self.txt("txt.test"), [b"v=spf1 -all", b"x" * 300])
            with self.assertRaises(NoSuchName):
                await self.txt("nowhere.test")
            with self.assertRaises(LookupFailed):
                await self.txt("slow.test")
        self.assertEqual((self.asked("txt.test"), self.asked("nowhere.test"), self.asked("slow.test")), (1, 1, 3))
        self.clock.advance(61)  # the zone's TTL, and the negative one, have passed
        await self.txt("txt.test")
        with self.assertRaises(NoSuchName):
            await self.txt("nowhere.test")
        self.assertEqual((self.asked("txt.test"), self.asked("nowhere.test")), (2, 2))
