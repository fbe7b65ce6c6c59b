"""DMARC (RFC 7489): policy records, organizational domains, alignment, pct, policy discovery over DNS."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from mailgate.mailauth.dmarc import Discovery, OrganizationalDomains, Policy, discover, evaluate, parse_policy
from mailgate.mailauth.results import DKIMResult, DMARCResult, SPFResult
from mailgate.net.dns import Lookups, make_resolver
from tests.support.fake_dns import FakeDNSServer

ORG = OrganizationalDomains()


def test_organizational_domains_come_from_the_public_suffix_list() -> None:
    assert ORG.of("mail.example.co.uk") == "example.co.uk"
    assert ORG.of("a.b.example.com") == "example.com"
    assert ORG.of("x.example.test") == "example.test"  # an unknown TLD is a public suffix
    assert ORG.of("someone.github.io") == "someone.github.io"  # a private-section suffix counts


def test_policy_records() -> None:
    assert parse_policy(b"v=DMARC1; p=reject; sp=none; adkim=s; pct=50") == Policy("reject", "none", "s", "r", 50)
    assert parse_policy(b"v=DMARC1;p=quarantine") == Policy("quarantine", "quarantine")
    assert parse_policy(b"v=DMARC1; p=bogus") is None  # no valid p= and no rua: ignored
    assert parse_policy(b"v=DMARC1; p=bogus; rua=mailto:d@example.test") == Policy("none", "none")
    assert parse_policy(b"v=spf1 -all") is None
    assert parse_policy(b"v=DMARC1; p=reject; pct=200").pct == 100  # type: ignore[union-attr]


def spf(result: str, domain: str) -> SPFResult:
    return SPFResult(result, "mailfrom", f"x@{domain}", domain)


def test_alignment_relaxed_and_strict() -> None:
    relaxed = Discovery("example.test", policy=Policy("reject", "reject"), found_at="example.test")
    strict = Discovery("example.test", policy=Policy("reject", "reject", "s", "s"), found_at="example.test")
    by_subdomain_dkim = [DKIMResult("pass", "mail.example.test", "s")]
    assert evaluate(relaxed, ORG, spf("fail", "example.test"), by_subdomain_dkim).result == "pass"
    assert evaluate(strict, ORG, spf("fail", "example.test"), by_subdomain_dkim).result == "fail"
    assert evaluate(strict, ORG, spf("pass", "example.test"), ()).result == "pass"
    assert evaluate(relaxed, ORG, spf("pass", "other.test"), [DKIMResult("pass", "other.test", "s")]) == \
        DMARCResult("fail", "example.test", "reject")
    assert evaluate(relaxed, ORG, spf("temperror", "example.test"), ()).result == "temperror"  # never a fail


def test_subdomain_policy_and_pct_sampling() -> None:
    from_sub = Discovery("news.example.test", policy=Policy("reject", "quarantine", pct=10), found_at="example.test")
    assert evaluate(from_sub, ORG, None, (), sample=lambda: 0.05).policy == "quarantine"  # sp= for a subdomain
    assert evaluate(from_sub, ORG, None, (), sample=lambda: 0.5).policy == "none"  # outside pct: one step down


class DiscoveryTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.dns = FakeDNSServer({
            "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject"]},
            "_dmarc.own.example.test": {"TXT": ["v=DMARC1; p=none"]},
            "_dmarc.double.test": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
        }).start()
        self.addCleanup(self.dns.stop)
        self.dns.fail("_dmarc.slow.test", "timeout")
        self.lookups = Lookups(make_resolver([self.dns.nameserver], reactor, timeouts=(0.5,)), 0.5, reactor)

    async def test_the_from_domain_first_then_its_organizational_domain(self) -> None:
        own = await discover(self.lookups, ORG, ["own.example.test"])
        self.assertEqual((own.policy, own.found_at), (Policy("none", "none"), "own.example.test"))
        inherited = await discover(self.lookups, ORG, ["news.example.test"])
        self.assertEqual((inherited.policy, inherited.found_at), (Policy("reject", "reject"), "example.test"))
        self.assertEqual((await discover(self.lookups, ORG, ["double.test"])).decided, DMARCResult("none", "double.test"))
        self.assertEqual((await discover(self.lookups, ORG, ["slow.test"])).decided.result, "temperror")  # type: ignore
        self.assertEqual((await discover(self.lookups, ORG, [])).decided.result, "none")  # type: ignore[union-attr]
        several = await discover(self.lookups, ORG, ["a.test", "b.test"])
        self.assertEqual(several.decided.result, "permerror")  # type: ignore[union-attr]
