"""Inbound checks end to end: a real twistd checks SPF, DKIM and DMARC against a fake DNS server.

The client is unauthenticated and outside `relay.allowed_networks`, so its
mail is checked. Every message is sent from a thread: the gateway asks the
fake DNS server, which answers from this test's reactor while smtplib
waits for the reply to DATA. `authentication.dns_timeout` is 1 s, so the
name that never answers costs a second, not five.
"""

from __future__ import annotations

import base64
import json
import smtplib
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.threads import deferToThread

from mailgate import authentication_results
from tests.support.gateway import Gateway, eventually
from tests.support.http_receiver import Receiver, listen
from tests.support.relay_gateway import ALICE, GatewayTestCase

AUTHSERV = "mx.example.test"  # server.hostname: the default authserv-id
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # the remote sender's signing key


def _public(key: Any) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _pem(key: Any) -> bytes:
    """PKCS#1, as dkimpy's own signer (the remote sender here) reads it."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


ZONE: dict[str, dict[str, Any]] = {
    "pass.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.pass.test": {"TXT": ["v=DMARC1; p=reject"]},
    "fail.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
    "_dmarc.fail.test": {"TXT": ["v=DMARC1; p=reject"]},
    "soft.test": {"TXT": ["v=spf1 ~all", "some other text record"]},
    "_dmarc.soft.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    "nospf.test": {"A": ["192.0.2.7"]},
    "slow.test": {},  # never answers (fail(... "timeout") below)
    "many.test": {"TXT": ["v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(11)) + " -all"]},
    **{f"h{i}.many.test": {"A": ["192.0.2.1"]} for i in range(11)},
    # signed.test: SPF fails for us, DKIM passes with an aligned signature, so DMARC passes
    "signed.test": {"TXT": ["v=spf1 -all"]},
    "_dmarc.signed.test": {"TXT": ["v=DMARC1; p=reject; adkim=s"]},
    "sel._domainkey.signed.test": {"TXT": [f"v=DKIM1; k=rsa; p={_public(KEY)}"]},
    "slowdmarc.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},  # its _dmarc never answers (setUp)
}


def body(author: str, extra: str = "") -> bytes:
    return (f"{extra}From: <{author}>\r\nTo: <{ALICE}>\r\nSubject: checked\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <c1@client.test>\r\n\r\nhello\r\n").encode()


def signed(author: str, selector: bytes = b"sel") -> bytes:
    message = body(author)
    return dkim.sign(message, selector, b"signed.test", _pem(KEY), include_headers=[b"from", b"to", b"subject"],
                     canonicalize=(b"relaxed", b"simple")) + message


def send(gateway: Gateway, sender: str, message: bytes, recipient: str = ALICE) -> tuple[int, bytes]:
    """One transaction in a thread-safe, blocking way; the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.ehlo("client.test")
        client.mail(sender)
        client.rcpt(recipient)
        return client.data(message)


class ChecksTests(GatewayTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.dns.records.update(ZONE)
        self.dns.fail("slow.test", "timeout")
        self.dns.fail("gone._domainkey.signed.test", "timeout")
        self.dns.fail("_dmarc.slowdmarc.test", "timeout")

    async def checked_gateway(self, settings: str = "", extra: str = "") -> Gateway:
        gateway = self.gateway(1, {"allowed_networks": []},
                               f'[authentication]\ndns_timeout = "1s"\n{settings}\n{extra}')
        gateway.add_user(ALICE)
        return await self.start(gateway)

    async def deliver(self, gateway: Gateway, sender: str, message: bytes) -> bytes:
        """Send, and the message as stored in alice's Maildir."""
        before = len(gateway.new_messages(ALICE))
        code, reply = await deferToThread(send, gateway, sender, message)
        self.assertEqual(code, 250, reply)
        paths = await eventually(lambda: len(gateway.new_messages(ALICE)) > before and gateway.new_messages(ALICE),
                                 "the message in alice's Maildir")
        stored = max(paths, key=lambda path: path.stat().st_mtime_ns).read_bytes()
        return stored

    async def test_spf_results_for_each_kind_of_record(self) -> None:
        gateway = await self.checked_gateway()
        expected = {"pass.test": "pass", "fail.test": "fail", "soft.test": "softfail", "neutral.test": "neutral",
                    "nospf.test": "none", "slow.test": "temperror", "many.test": "permerror"}
        for domain, word in expected.items():
            stored = await self.deliver(gateway, f"bob@{domain}", body(f"bob@{domain}"))
            self.assertEqual(stored.count(b"\nAuthentication-Results: "), 1, stored[:800])
            self.assertIn(f"\n\tspf={word} ".encode(), stored)
            self.assertIn(f"smtp.mailfrom=bob@{domain};".encode(), stored)
            results = authentication_results(stored, AUTHSERV)
            assert results is not None
            self.assertEqual((domain, results["spf"], results["dkim"]), (domain, word, []))
        self.assertIn(b"spf=permerror (more than 10 DNS lookups)", stored)

    async def test_dkim_and_dmarc_results(self) -> None:
        gateway = await self.checked_gateway()
        stored = await self.deliver(gateway, "bob@signed.test", signed("bob@signed.test"))
        self.assertEqual(authentication_results(stored, AUTHSERV), {
            "spf": "fail", "dkim": [{"domain": "signed.test", "selector": "sel", "result": "pass"}], "dmarc": "pass"})
        self.assertIn(b"\tdkim=pass header.d=signed.test header.s=sel;\n", stored)
        self.assertIn(b"\tdmarc=pass (p=reject) header.from=signed.test\n", stored)
        broken = signed("bob@signed.test").replace(b"hello", b"goodbye")
        results = authentication_results(await self.deliver(gateway, "bob@signed.test", broken), AUTHSERV)
        assert results is not None
        self.assertEqual((results["dkim"][0]["result"], results["dmarc"]), ("fail", "fail"))
        results = authentication_results(await self.deliver(gateway, "bob@pass.test", body("bob@pass.test")), AUTHSERV)
        self.assertEqual(results, {"spf": "pass", "dkim": [], "dmarc": "pass"})
        results = authentication_results(await self.deliver(gateway, "bob@slow.test", body("x@nospf.test")), AUTHSERV)
        self.assertEqual(results, {"spf": "temperror", "dkim": [], "dmarc": "none"})

    async def test_dkim_and_dmarc_errors_and_none(self) -> None:
        """The words besides pass and fail, as stored: a key that never answers, a key that is not there,
        no signature at all, a DMARC policy lookup that never answers."""
        gateway = await self.checked_gateway()
        stored = await self.deliver(gateway, "bob@signed.test", signed("bob@signed.test", b"gone"))
        self.assertIn(b"\tdkim=temperror (", stored)
        self.assertIn(b"\tdmarc=temperror (p=reject", stored)  # the only aligned result could not complete
        stored = await self.deliver(gateway, "bob@signed.test", signed("bob@signed.test", b"nokey"))
        self.assertIn(b"\tdkim=permerror (", stored)
        self.assertIn(b"header.s=nokey;", stored)
        self.assertIn(b"\tdmarc=fail (p=reject) header.from=signed.test\n", stored)
        stored = await self.deliver(gateway, "bob@slowdmarc.test", body("bob@slowdmarc.test"))
        self.assertEqual(authentication_results(stored, AUTHSERV), {"spf": "pass", "dkim": [], "dmarc": "temperror"})
        self.assertIn(b"\tspf=pass smtp.mailfrom=bob@slowdmarc.test;\n\tdkim=none;\n\tdmarc=temperror", stored)
        stored = await self.deliver(gateway, "bob@nospf.test", body("bob@nospf.test"))
        self.assertEqual(authentication_results(stored, AUTHSERV), {"spf": "none", "dkim": [], "dmarc": "none"})

    async def test_a_forged_field_with_our_authserv_id_is_removed(self) -> None:
        gateway = await self.checked_gateway()
        forged = (f"Authentication-Results: {AUTHSERV.upper()};\r\n spf=pass smtp.mailfrom=ceo@pass.test\r\n"
                  "Authentication-Results: other.example; dkim=pass header.d=fail.test\r\n")
        stored = await self.deliver(gateway, "bob@fail.test", body("bob@fail.test", forged))
        self.assertNotIn(b"ceo@pass.test", stored)
        self.assertIn(b"Authentication-Results: other.example; dkim=pass header.d=fail.test\n", stored)
        self.assertEqual(stored.count(b"Authentication-Results: mx.example.test;"), 1)
        self.assertEqual(authentication_results(stored, AUTHSERV)["spf"], "fail")  # type: ignore[index]

    async def test_enforce_refuses_a_reject_failure_and_marks_a_quarantine_one(self) -> None:
        gateway = await self.checked_gateway('dmarc = "enforce"')
        code, reply = await deferToThread(send, gateway, "bob@fail.test", body("bob@fail.test"))
        self.assertEqual((code, reply), (550, b"5.7.1 Message refused by the DMARC policy of fail.test"))
        self.assertEqual(gateway.new_messages(ALICE), [])
        stored = await self.deliver(gateway, "bob@soft.test", body("bob@soft.test"))
        self.assertIn(b"\tdmarc=fail (p=quarantine) header.from=soft.test\n", stored)
        stored = await self.deliver(gateway, "bob@signed.test", signed("bob@signed.test"))  # DKIM saves it
        self.assertIn(b"\tdmarc=pass (p=reject) header.from=signed.test\n", stored)

    async def test_the_webhook_json_carries_the_results(self) -> None:
        receiver = Receiver([204])
        url = listen(self, receiver, path="/inbound")
        hook = f'[[webhook]]\nname = "in"\nmatch = ["hook@example.test"]\nurl = "{url}"\n'
        gateway = await self.checked_gateway(extra=hook)
        code, reply = await deferToThread(send, gateway, "bob@signed.test", signed("bob@signed.test"),
                                          "hook@example.test")
        self.assertEqual(code, 250, reply)
        [request] = await eventually(lambda: receiver.requests, "the webhook POST")
        document = json.loads(request["body"])
        self.assertEqual(document["authentication"], {
            "spf": "fail", "dkim": [{"domain": "signed.test", "selector": "sel", "result": "pass"}], "dmarc": "pass"})

    async def test_no_field_and_no_lookup_when_the_checks_are_off(self) -> None:
        gateway = await self.checked_gateway('checks = []')
        stored = await self.deliver(gateway, "bob@pass.test", body("bob@pass.test"))
        self.assertNotIn(b"Authentication-Results:", stored)
        self.assertIsNone(authentication_results(stored, AUTHSERV))
        self.assertEqual([q for q in self.dns.queries if "pass.test" in q[0]], [])
