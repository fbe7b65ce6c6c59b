"""DSN (RFC 3461) end to end: a real `twistd mailgate`, smtplib clients, fake next hops.

The sender is a local user, so every report lands in her Maildir: a
`delivered` one for a local recipient that asked NOTIFY=SUCCESS, a
`relayed` one when the next hop offers no DSN, none when it does (it is
handed NOTIFY, ORCPT, RET and ENVID instead), no bounce for NOTIFY=NEVER,
and only the headers for RET=HDRS.
"""

from __future__ import annotations

import email
import smtplib
from email import policy
from tests.support.gateway import Gateway, eventually, free_port
from tests.support.relay_gateway import ALICE, BOB, PRIMARY, GatewayTestCase, queued_id

DAVE = "dave@example.test"  # a second local user
ORCPT = "rfc822;bob+2Bx@remote.test"  # xtext: the original recipient was bob+x@remote.test
BODY = b"Subject: dsn test\r\nMessage-ID: <dsn@example.test>\r\n\r\nthe body text\r\n"


def send(gateway: Gateway, recipient: str, mail_options: list[str], rcpt_options: list[str]) -> str:
    """One message from ALICE with DSN parameters (smtplib's own options); the queue id."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        code, reply = client.mail(ALICE, mail_options)
        assert code == 250, (code, reply)
        code, reply = client.rcpt(recipient, rcpt_options)
        assert code == 250, (code, reply)
        code, reply = client.data(BODY)
        assert code == 250, (code, reply)
        return queued_id(reply)


def delivery_status(raw: bytes) -> bytes:
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed.get_content_type() == "multipart/report", raw[:300]
    return list(parsed.iter_parts())[1].as_bytes()


class DSNTests(GatewayTestCase):
    async def gateway_with_users(self, mx_port: int, *users: str) -> Gateway:
        gateway = self.gateway(mx_port)
        for user in (ALICE, *users):
            gateway.add_user(user)
        return await self.start(gateway)

    async def reports_to_alice(self, gateway: Gateway, count: int = 1) -> list[bytes]:
        paths = await eventually(lambda: len(gateway.new_messages(ALICE)) >= count and gateway.new_messages(ALICE),
                                 "a report to the sender")
        return [path.read_bytes() for path in sorted(paths)]

    async def test_success_dsn_after_local_delivery(self) -> None:
        gateway = await self.gateway_with_users(self.unused_port(), DAVE)
        send(gateway, DAVE, ["ENVID=env+2B1"], ["NOTIFY=SUCCESS", f"ORCPT={ORCPT}"])
        [raw] = await self.reports_to_alice(gateway)
        self.assertTrue(raw.startswith(b"Return-Path: <>\n"), raw[:200])
        status = delivery_status(raw)
        self.assertIn(b"Action: delivered", status)
        self.assertIn(b"Status: 2.0.0", status)
        self.assertIn(b"Final-Recipient: rfc822; dave@example.test", status)
        self.assertIn(b"Original-Recipient: rfc822;bob+x@remote.test", status)
        self.assertIn(b"Original-Envelope-Id: env+1", status)
        self.assertIn(b"Subject: dsn test", raw)  # the headers come back...
        self.assertNotIn(b"the body text", raw)  # ...never the body of a success report
        self.assertEqual(len(gateway.new_messages(DAVE)), 1)

    async def test_no_success_dsn_without_notify(self) -> None:
        gateway = await self.gateway_with_users(self.unused_port(), DAVE)
        send(gateway, DAVE, [], [])
        await eventually(lambda: gateway.new_messages(DAVE), "the delivery")
        # A (wrong) report would be in ALICE's Maildir already: reports of what is delivered at once
        # are written before the client hears 250 (Deliverer.deliver awaits them).
        self.assertEqual(gateway.new_messages(ALICE), [])

    async def test_next_hop_with_dsn_is_given_the_parameters(self) -> None:
        sink = await self.serve(PRIMARY, extensions=("DSN",))
        gateway = await self.gateway_with_users(sink.port)
        send(gateway, BOB, ["RET=HDRS", "ENVID=abc"], ["NOTIFY=SUCCESS,FAILURE", f"ORCPT={ORCPT}"])
        await eventually(lambda: sink.messages, "the next hop to receive the message")
        await self.queue_empty()
        commands = sink.sessions[0].commands
        [mail] = [c for c in commands if c.startswith("MAIL FROM:")]
        [rcpt] = [c for c in commands if c.startswith("RCPT TO:")]
        self.assertTrue(mail.endswith(" RET=HDRS ENVID=abc"), mail)
        self.assertEqual(rcpt, f"RCPT TO:<{BOB}> NOTIFY=SUCCESS,FAILURE ORCPT={ORCPT}")
        # The queue is empty, so any (wrong) report is written: the scheduler reports before it removes.
        self.assertEqual(gateway.new_messages(ALICE), [])  # the next hop reports success, not mailgate

    async def test_next_hop_without_dsn_gets_none_and_the_sender_hears_relayed(self) -> None:
        sink = await self.serve(PRIMARY)
        gateway = await self.gateway_with_users(sink.port)
        send(gateway, BOB, ["RET=FULL"], ["NOTIFY=SUCCESS"])
        [raw] = await self.reports_to_alice(gateway)
        commands = sink.sessions[0].commands
        self.assertFalse([c for c in commands if "NOTIFY" in c or "RET=" in c], commands)
        status = delivery_status(raw)
        self.assertIn(b"Action: relayed", status)
        self.assertIn(b"Final-Recipient: rfc822; bob@remote.test", status)
        self.assertIn(b"Remote-MTA: dns; mx1.remote.test", status)

    async def test_notify_never_suppresses_the_bounce(self) -> None:
        sink = await self.serve(PRIMARY, rcpt_replies={BOB: "550 5.1.1 no such user here"})
        gateway = await self.gateway_with_users(sink.port)
        queue_id = send(gateway, BOB, [], ["NOTIFY=NEVER"])
        await eventually(lambda: sink.sessions and any(c.startswith("RCPT") for c in sink.sessions[0].commands),
                         "the delivery attempt")
        await self.queue_empty()  # the scheduler bounces before it removes an entry: none came by now
        self.assertEqual(gateway.new_messages(ALICE), [])
        self.assertNotIn(f"{queue_id}B", gateway.log())

    async def test_ret_hdrs_bounce_carries_only_the_headers(self) -> None:
        sink = await self.serve(PRIMARY, rcpt_replies={BOB: "550 5.1.1 no such user here"})
        gateway = await self.gateway_with_users(sink.port)
        send(gateway, BOB, ["RET=HDRS", "ENVID=e1"], [f"ORCPT={ORCPT}"])
        [raw] = await self.reports_to_alice(gateway)
        parsed = email.message_from_bytes(raw, policy=policy.default)
        parts = [p.get_content_type() for p in parsed.iter_parts()]
        self.assertEqual(parts, ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertIn(b"Subject: dsn test", raw)
        self.assertNotIn(b"the body text", raw)
        status = delivery_status(raw)
        self.assertIn(b"Action: failed", status)
        self.assertIn(b"Original-Envelope-Id: e1", status)
        self.assertIn(b"Original-Recipient: rfc822;bob+x@remote.test", status)

    async def test_ret_full_bounce_carries_the_message(self) -> None:
        sink = await self.serve(PRIMARY, rcpt_replies={BOB: "550 5.1.1 no such user here"})
        gateway = await self.gateway_with_users(sink.port)
        send(gateway, BOB, ["RET=FULL"], [])
        [raw] = await self.reports_to_alice(gateway)
        self.assertIn(b"the body text", raw)

    async def test_bad_parameters_are_refused(self) -> None:
        gateway = await self.gateway_with_users(self.unused_port())
        with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:
            client.ehlo("client.test")
            self.assertEqual(client.mail(ALICE, ["RET=BODY"])[0], 501)
            self.assertEqual(client.mail(ALICE, ["ENVID=a=b"])[0], 501)
            self.assertEqual(client.mail(ALICE)[0], 250)
            self.assertEqual(client.rcpt(BOB, ["NOTIFY=NEVER,SUCCESS"])[0], 501)
            self.assertEqual(client.rcpt(BOB, ["ORCPT=bob@remote.test"])[0], 501)
            code, reply = client.rcpt(BOB, ["NOTIFY=DELAY"])
            self.assertEqual(code, 250, reply)

    def unused_port(self) -> int:
        """An MX port nobody listens on: the tests that deliver locally never relay."""
        return free_port()
