"""SRS end to end: a forward to a remote address leaves with an SRS0 sender, and its bounces find the way back."""

from __future__ import annotations

import re
import smtplib
import time

from mailgate.mailauth.srs import SenderRewriting
from tests.support.gateway import Gateway, eventually
from tests.support.relay_gateway import ALICE, BOB, CAROL, HOSTNAME, PRIMARY, GatewayTestCase, RawSMTP, submit

SECRET = "a secret of more than sixteen characters"
FORWARDS = """
[srs]
secret = "%s"

[[forward]]
match = "fwd@example.test"
to = ["%s"]
""" % (SECRET, CAROL)
SRS0 = re.compile(r"MAIL FROM:<(SRS0=[\w-]{4}=[A-Z2-7]{2}=([^=]+)=([^@]+)@mx\.example\.test)>")


def bounce_to(gateway: Gateway, address: str) -> tuple[int, str]:
    """A DSN from a remote server: null sender, to `address`; the reply to RCPT (and to DATA if accepted)."""
    client = RawSMTP(gateway.ports["smtp"])
    try:
        client.reply()
        client.command(b"EHLO remote.test")
        client.command(b"MAIL FROM:<>")
        code, text = client.command(f"RCPT TO:<{address}>".encode())
        if code != 250:
            return code, text
        client.command(b"DATA")
        return client.command(b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered Mail\r\n\r\nbounced\r\n.")
    finally:
        client.close()


class SRSTests(GatewayTestCase):
    async def start_forwarder(self, **knobs: object) -> Gateway:
        self.sink = await self.serve(PRIMARY, **knobs)
        gateway = self.gateway(self.sink.port, extra=FORWARDS)
        gateway.add_user(ALICE)
        return await self.start(gateway)

    async def forwarded(self, gateway: Gateway, sender: str, subject: bytes) -> tuple[str, str, str]:
        """`sender`'s mail to fwd@ forwarded: (its SRS sender at the remote MX, the domain and local part inside)."""
        submit(gateway, sender, ["fwd@example.test"], b"Subject: " + subject + b"\r\n\r\nhello\r\n")
        await eventually(lambda: self.sink.messages, "the forwarded copy at the remote MX")
        await eventually(lambda: self.sink.sessions and len(self.sink.sessions[-1].commands) > 1, "a relay session")
        mail = next(command for command in self.sink.sessions[-1].commands if command.startswith("MAIL FROM:"))
        match = SRS0.match(mail)
        assert match is not None, mail
        return match[1], match[2], match[3]

    async def test_forwarded_mail_gets_an_srs0_sender_and_a_bounce_to_it_reaches_the_sender(self) -> None:
        gateway = await self.start_forwarder()
        address, domain, local = await self.forwarded(gateway, ALICE, b"forwarded")
        self.assertEqual((domain, local), ("example.test", "alice"))
        self.assertIn(f"RCPT TO:<{CAROL}>", self.sink.sessions[-1].commands)
        self.assertEqual(bounce_to(gateway, address.lower())[0], 250)  # servers may change the case
        [path] = await eventually(lambda: gateway.new_messages(ALICE), "the bounce in alice's Maildir")
        stored = path.read_bytes()
        self.assertTrue(stored.startswith(b"Return-Path: <>\n"), stored[:100])
        self.assertIn(b"Subject: Undelivered Mail", stored)

    async def test_a_remote_sender_is_rewritten_and_its_bounce_relayed_back_to_it(self) -> None:
        gateway = await self.start_forwarder()
        address, domain, local = await self.forwarded(gateway, BOB, b"from afar")
        self.assertEqual((domain, local), ("remote.test", "bob"))
        self.assertEqual(bounce_to(gateway, address)[0], 250)
        await eventually(lambda: len(self.sink.messages) == 2, "the bounce relayed to bob's MX")
        commands = self.sink.sessions[-1].commands
        self.assertIn("MAIL FROM:<>", [c.split(" SIZE=")[0] for c in commands])
        self.assertIn(f"RCPT TO:<{BOB}>", commands)

    async def test_our_own_bounce_of_a_forwarded_copy_reaches_the_original_sender(self) -> None:
        """The remote MX refuses the forwarded copy: mailgate's DSN goes to the SRS sender, which
        reverses to alice."""
        gateway = await self.start_forwarder(rcpt_replies={CAROL: "550 5.1.1 no such user"})
        submit(gateway, ALICE, ["fwd@example.test"], b"Subject: will bounce\r\n\r\nhello\r\n")
        raw, parsed = await self.bounce_for(gateway, ALICE)
        self.assertReport(raw, parsed)
        self.assertIn(CAROL.encode(), raw)

    async def test_forged_and_expired_srs_addresses_are_refused(self) -> None:
        gateway = await self.start_forwarder()
        forged = f"SRS0=AAAA=AB=example.test=alice@{HOSTNAME}"
        code, text = bounce_to(gateway, forged)
        self.assertEqual((code, text[:5]), (550, "5.1.1"))
        self.assertEqual(gateway.new_messages(ALICE), [])
        old = SenderRewriting(SECRET, HOSTNAME, now=lambda: time.time() - 22 * 86400).forward(ALICE)
        assert old is not None
        code, text = bounce_to(gateway, old)
        self.assertEqual((code, text[:5]), (550, "5.1.1"))
        fresh = SenderRewriting(SECRET, HOSTNAME, now=lambda: time.time() - 20 * 86400).forward(ALICE)
        assert fresh is not None
        self.assertEqual(bounce_to(gateway, fresh)[0], 250)  # 20 days old: still good
        with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:  # an SRS1 we never made
            client.ehlo("remote.test")
            client.mail("")
            code, reply = client.rcpt(f"SRS1=XXXX=other.test==AAAA=AB=x.test=y@{HOSTNAME}")
            self.assertEqual((code, reply[:5]), (550, b"5.1.1"))
