"""DKIM signing end to end: a real twistd signs, an MX receives, independent verifiers say pass.

The MX is our FakeSMTPServer, or Postfix's smtp-sink (a real SMTP server
written by others).

Keys are made with `mailgate dkim keygen` and their records published on
the fake DNS server; the verifiers (Perl's Mail::DKIM for RSA, rspamd for
RSA and Ed25519) take the keys from that server, as any receiver would
from the real DNS. Neither is dkimpy, which mailgate builds its
signatures with.
"""

from __future__ import annotations

import email
import smtplib
from email import policy

import pytest
from twisted.internet.threads import deferToThread

from tests.support.dkim_verifiers import NO_MAIL_DKIM, have_mail_dkim, mail_dkim, rspamd_dkim
from tests.support.gateway import Gateway, eventually
from tests.support.relay_gateway import ALICE, BOB, PRIMARY, GatewayTestCase, submit, toml_table
from tests.support.rspamd import NO_RSPAMD, RSPAMD, RspamdServer
from tests.support.smtp_sink import NO_SMTP_SINK, SMTP_SINK, PostfixSink

MAIL_DKIM = have_mail_dkim()
PASSWORD = "correct horse"


def message(sender: str, subject: str = "signed") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x1@example.test>\r\n\r\n"
            "Two  spaces,\ta tab, trailing blanks   \r\n\r\nand the end.\r\n").encode()


class SigningTests(GatewayTestCase):
    async def keygen(self, gateway: Gateway, domain: str, selector: str, algorithm: str = "rsa") -> str:
        """`mailgate dkim keygen`, and its record published where the verifiers look."""
        done = await self.cli(gateway, "dkim", "keygen", domain, "--selector", selector, "--algorithm", algorithm)
        self.assertEqual(done.returncode, 0, done.stderr)
        record = done.stdout.strip()
        name, _, rest = record.partition(". IN TXT ")
        self.assertEqual(name, f"{selector}._domainkey.{domain}")
        self.assertTrue(rest.startswith(f'"v=DKIM1; k={algorithm}; p=') and rest.endswith('"'), record)
        self.dns.records[name] = {"TXT": [rest[1:-1]]}
        return record

    async def relayed(self, sink_count: int = 1) -> list[bytes]:
        await eventually(lambda: len(self.sink.messages) >= sink_count, "the MX to receive the message")
        return self.sink.message_bodies()

    async def with_keys(self, gateway: Gateway) -> Gateway:
        """An RSA key (s1) for example.test and an Ed25519 one (e1) for ed.example.test."""
        await self.keygen(gateway, "example.test", "s1")
        await self.keygen(gateway, "ed.example.test", "e1", "ed25519")
        return gateway

    async def setup_gateway(self, relay: dict | None = None, extra: str = "") -> Gateway:
        self.sink = await self.serve(PRIMARY)
        return await self.with_keys(self.gateway(self.sink.port, relay, extra))

    @pytest.mark.skipif(not MAIL_DKIM, reason=NO_MAIL_DKIM)
    async def test_mail_from_a_trusted_network_is_signed_and_verifies_at_mail_dkim(self) -> None:
        gateway = await self.start(await self.setup_gateway())  # relay.allowed_networks: 127.0.0.0/8
        submit(gateway, ALICE, [BOB], message(ALICE))
        [received] = await self.relayed()
        self.assertEqual(received.count(b"\r\nDKIM-Signature: "), 1, received[:600])
        verdicts = await mail_dkim(received, self.dns)
        self.assertEqual(verdicts, [("pass", "example.test", "s1", "rsa-sha256"), ("overall", "pass")])
        # the check is real: a changed body fails at the same verifier
        tampered = received.replace(b"and the end.", b"and THE end.")
        self.assertEqual((await mail_dkim(tampered, self.dns))[0][0], "fail")

    @pytest.mark.skipif(not MAIL_DKIM, reason=NO_MAIL_DKIM)
    async def test_authenticated_mail_is_signed_with_both_selectors_during_rotation(self) -> None:
        gateway = await self.setup_gateway({"allowed_networks": []}, '[security]\nplaintext_auth = "always"\n')
        await self.keygen(gateway, "example.test", "s2")  # rotation: the new key beside the old one
        gateway.add_user(ALICE, PASSWORD)
        await self.start(gateway)

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
                client.ehlo("client.test")
                client.login(ALICE, PASSWORD)
                client.sendmail(ALICE, [BOB], message(ALICE))

        await deferToThread(send)
        [received] = await self.relayed()
        verdicts = await mail_dkim(received, self.dns)
        self.assertEqual(sorted(verdicts[:-1]), [("pass", "example.test", "s1", "rsa-sha256"),
                                                 ("pass", "example.test", "s2", "rsa-sha256")])
        # the old file removed: the running server signs with the new one alone, no restart
        (gateway.root / "var" / "dkim" / "example.test" / "s1.pem").unlink()
        await deferToThread(send)
        received = (await self.relayed(2))[1]
        self.assertEqual((await mail_dkim(received, self.dns))[:-1], [("pass", "example.test", "s2", "rsa-sha256")])

    @pytest.mark.skipif(RSPAMD is None, reason=NO_RSPAMD)
    async def test_rsa_and_ed25519_signatures_verify_at_rspamd(self) -> None:
        gateway = await self.start(await self.setup_gateway())
        submit(gateway, ALICE, [BOB], message(ALICE))
        submit(gateway, ALICE, [BOB], message("carol@ed.example.test", "ed25519"))
        ed_signed, rsa_signed = sorted(await self.relayed(2), key=lambda m: b"@ed.example.test" not in m)
        self.assertIn(b"a=ed25519-sha256;", ed_signed.replace(b"\r\n ", b" "))
        rspamd = RspamdServer(nameserver=self.dns.nameserver)
        await deferToThread(rspamd.start)
        self.addCleanup(rspamd.stop)
        self.assertEqual(await rspamd_dkim(rspamd, rsa_signed), ["example.test:+"])
        self.assertEqual(await rspamd_dkim(rspamd, ed_signed), ["ed.example.test:+"])
        self.assertEqual(await rspamd_dkim(rspamd, ed_signed.replace(b"and the end.", b"tampered")),
                         ["ed.example.test:-"])

    @pytest.mark.skipif(SMTP_SINK is None, reason=NO_SMTP_SINK)
    @pytest.mark.skipif(not MAIL_DKIM, reason=NO_MAIL_DKIM)
    @pytest.mark.skipif(RSPAMD is None, reason=NO_RSPAMD)
    async def test_signatures_verify_as_received_by_postfixs_smtp_sink(self) -> None:
        """The far end is Postfix's smtp-sink, not our fake: what an independent SMTP server received
        verifies at Mail::DKIM (RSA) and rspamd (RSA and Ed25519)."""
        sink = PostfixSink()
        await sink.start(PRIMARY)
        self.addCleanup(sink.stop)
        gateway = await self.start(await self.with_keys(self.gateway(sink.port)))
        submit(gateway, ALICE, [BOB], message(ALICE))
        submit(gateway, "carol@ed.example.test", [BOB], message("carol@ed.example.test", "ed25519"))
        await self.queue_empty()  # smtp-sink said 250 to both
        ed_signed, rsa_signed = sorted(await sink.received(2), key=lambda m: b"@ed.example.test" not in m)
        self.assertIn(b"X-Client-Proto: ESMTP\r\n", rsa_signed)  # smtp-sink's dump, not our fake's
        self.assertEqual(await mail_dkim(rsa_signed, self.dns),
                         [("pass", "example.test", "s1", "rsa-sha256"), ("overall", "pass")])
        rspamd = RspamdServer(nameserver=self.dns.nameserver)
        await deferToThread(rspamd.start)
        self.addCleanup(rspamd.stop)
        self.assertEqual(await rspamd_dkim(rspamd, rsa_signed), ["example.test:+"])
        self.assertEqual(await rspamd_dkim(rspamd, ed_signed), ["ed.example.test:+"])

    async def test_mail_from_an_unauthenticated_session_is_not_signed(self) -> None:
        """No AUTH, not in relay.allowed_networks: relayed by a forward rule, and never signed,
        whatever its From: says. (Sent from a thread: the checks ask the fake DNS, which answers
        from this reactor.)"""
        forward = toml_table("forward", {"match": "fwd@example.test", "to": [BOB]}).replace("[forward]", "[[forward]]")
        gateway = await self.start(await self.setup_gateway({"allowed_networks": []}, forward))
        await deferToThread(submit, gateway, "someone@remote.test", ["fwd@example.test"], message(ALICE))
        [received] = await self.relayed()
        self.assertNotIn(b"DKIM-Signature:", received)

    @pytest.mark.skipif(not MAIL_DKIM, reason=NO_MAIL_DKIM)
    async def test_a_dsn_is_signed_with_the_server_hostnames_key(self) -> None:
        """A bounce mailgate writes is signed with server.hostname's key."""
        self.sink = await self.serve(PRIMARY, rcpt_replies={BOB: "550 5.1.1 no such user"})
        gateway = self.gateway(self.sink.port)
        await self.keygen(gateway, "mx.example.test", "bounces")
        gateway.add_user(ALICE)
        await self.start(gateway)
        submit(gateway, ALICE, [BOB], message(ALICE))
        raw, parsed = await self.bounce_for(gateway, ALICE)
        self.assertReport(raw, parsed)
        self.assertIn("mx.example.test", parsed["From"])
        wire = raw.split(b"\n", 1)[1].replace(b"\n", b"\r\n")  # as it would be relayed: no Return-Path, CRLF
        verdicts = await mail_dkim(wire, self.dns)
        self.assertEqual(verdicts, [("pass", "mx.example.test", "bounces", "rsa-sha256"), ("overall", "pass")])
        self.assertIsNotNone(email.message_from_bytes(raw, policy=policy.default)["DKIM-Signature"])
