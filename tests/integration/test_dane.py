"""DANE end to end: a real twistd, TLSA records from the fake DNS server (AD bit set as a validating
resolver would), and an MX whose trustme certificate matches them, or does not."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization

from tests.support.certificates import CertificateAuthority
from tests.support.gateway import eventually
from tests.support.relay_gateway import ALICE, BOB, PRIMARY, GatewayTestCase, submit


def spki_sha256(certificate) -> bytes:
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


class DANETests(GatewayTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority()
        self.dns.records["remote.test"] = {"MX": [(10, "mx1.remote.test")]}  # one MX: nowhere else to go
        self.dns.records[""] = {}  # the root, for the start-up probe
        self.certificate, self.options = self.ca.leaf("mx1.remote.test")

    async def dane_gateway(self, records: list, secure: bool = True, **sink: object) -> tuple:
        primary = await self.serve(PRIMARY, starttls=True, tls_options=sink.pop("tls_options", self.options), **sink)
        name = f"_{primary.port}._tcp.mx1.remote.test"
        self.dns.records[name] = {"TLSA": records}
        if secure:
            self.dns.secure.update({"", name})
        gateway = await self.start(self.gateway(primary.port, {"dane": True}))
        return primary, gateway

    async def test_dane_ee_match_delivers_over_tls(self) -> None:
        primary, gateway = await self.dane_gateway([(3, 1, 1, spki_sha256(self.certificate))])
        submit(gateway, ALICE, [BOB], b"Subject: dane\r\n\r\nhi\r\n")
        await eventually(lambda: primary.messages, "delivery to the DANE-protected MX")
        self.assertTrue(primary.sessions[0].tls)
        self.assertIn("validates DNSSEC", gateway.log())

    async def test_mismatch_is_deferred_never_downgraded(self) -> None:
        primary, gateway = await self.dane_gateway([(3, 1, 1, b"\x00" * 32)])
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: mismatch\r\n\r\nhi\r\n")
        entry = await self.attempted(queue_id)
        self.assertIn("4.7.5", entry.last_error or "")
        self.assertIn("DANE", entry.last_error or "")
        self.assertEqual(primary.messages, [])
        self.assertFalse(any(c.startswith("MAIL") for s in primary.sessions for c in s.commands))

    async def test_dane_ta_needs_the_chain_to_the_anchor(self) -> None:
        """2 0 1: the CA certificate (sent in the chain) matches, and the leaf it issued names the MX."""
        anchor = hashlib.sha256(self.ca.certificate().public_bytes(serialization.Encoding.DER)).digest()
        options = self.ca.server_options("mx1.remote.test", chain_with_ca=True)
        primary, gateway = await self.dane_gateway([(2, 0, 1, anchor)], tls_options=options)
        submit(gateway, ALICE, [BOB], b"Subject: dane-ta\r\n\r\nhi\r\n")
        await eventually(lambda: primary.messages, "delivery under DANE-TA")
        self.assertTrue(primary.sessions[0].tls)

    async def test_answers_without_ad_are_no_dane(self) -> None:
        """A resolver that does not validate: the (mismatching) TLSA records are ignored, with a
        start-up line saying so, and mail goes as without DANE."""
        primary, gateway = await self.dane_gateway([(3, 1, 1, b"\x00" * 32)], secure=False)
        submit(gateway, ALICE, [BOB], b"Subject: insecure\r\n\r\nhi\r\n")
        await eventually(lambda: primary.messages, "delivery as without DANE")
        self.assertIn("does not validate DNSSEC", gateway.log())
