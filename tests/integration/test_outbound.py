"""Outbound delivery end to end: a real `twistd mailgate` relaying to fake MX servers.

The gateway runs as a subprocess in a temporary directory. The fake DNS server
(127.0.0.1) and the fake remote SMTP servers (127.0.0.2 = primary MX,
127.0.0.3 = backup MX or smarthost) run in this process, on the reactor, so
these are trial TestCases and every wait is an asynchronous poll: blocking the
reactor would silence the fakes the gateway is talking to. Mail is submitted
with short blocking smtplib calls (mailgate queues without talking to the
fakes before it answers 250); `mailgate queue ...` runs in a thread.
"""

from __future__ import annotations

import signal
import smtplib
from datetime import datetime

from tests.support.fake_smtp import FakeSMTPServer
from tests.support.gateway import Gateway, eventually, free_port
from tests.support.relay_gateway import (
    ACCEPT, ALICE, BACKUP, BOB, CAROL, DEFER, HOSTNAME, PRIMARY, SHUTDOWN_GRACE_SECONDS, GatewayTestCase, RawSMTP,
    no_bare_line_ends, pause, submit,
)

# --- delivery --------------------------------------------------------------------


class DeliveryTests(GatewayTestCase):
    async def test_delivery_by_mx(self) -> None:
        """Mail for remote.test reaches its best MX (127.0.0.2): the right envelope in one
        connection, canonical CRLF, dot-stuffing undone by nobody but the receiver, and
        mailgate's Received header on top (no Return-Path: that is the final MTA's job)."""
        primary, backup = await self.two_mx()
        gateway = await self.start(self.gateway(primary.port))
        body = (b"From: alice@example.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n"
                b".\r\nlast line\r\n")
        queue_id = submit(gateway, ALICE, [BOB, CAROL], body)
        await eventually(lambda: primary.messages, "the primary MX to receive the message")
        await self.queue_empty()

        [session] = primary.sessions
        self.assertEqual(session.commands[0], f"EHLO {HOSTNAME}")
        mail = session.commands[1]
        self.assertTrue(mail.startswith(f"MAIL FROM:<{ALICE}> SIZE="), mail)
        self.assertEqual(session.commands[2:5], [f"RCPT TO:<{BOB}>", f"RCPT TO:<{CAROL}>", "DATA"])
        self.assertNotIn("QUIT", session.commands)  # cached for the next message (relay.connection_cache_time)
        await self.stop(gateway)
        await eventually(lambda: session.commands[-1] == "QUIT", "QUIT on the cached session at shutdown")
        raw = primary.messages[0]
        self.assertTrue(no_bare_line_ends(raw))
        self.assertIn(b"\r\n\r\n..leading dot\r\n...two dots\r\n..\r\nlast line\r\n.\r\n", raw)
        [received] = primary.message_bodies()
        self.assertTrue(received.startswith(
            b"Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test (mailgate) with ESMTP id "
            + queue_id.encode() + b";\r\n\t"), received[:200])
        self.assertNotIn(b"Return-Path:", received)
        self.assertTrue(received.endswith(body))
        self.assertEqual(int(mail.split("SIZE=")[1].split()[0]), len(received))
        self.assertEqual(backup.sessions, [])

    async def test_primary_down_backup_mx_gets_it(self) -> None:
        """Nothing listens on the primary MX (127.0.0.2): the backup MX (127.0.0.3) gets the mail."""
        backup = await self.serve(BACKUP)
        gateway = await self.start(self.gateway(backup.port))
        submit(gateway, ALICE, [BOB], b"Subject: via backup\r\n\r\nhello\r\n")
        await eventually(lambda: backup.messages, "the backup MX to receive the message")
        await self.queue_empty()
        self.assertIn(("mx1.remote.test", "A"), self.dns.queries)  # the primary was tried first
        self.assertEqual(backup.sessions[0].commands[2], f"RCPT TO:<{BOB}>")
        self.assertTrue(backup.message_bodies()[0].endswith(b"Subject: via backup\r\n\r\nhello\r\n"))

    async def test_smarthost_takes_all_remote_mail_without_dns(self) -> None:
        """relay.smarthost: every remote recipient, whatever its domain, goes to that host; no
        DNS question is asked (the MX port is closed, so MX delivery could not succeed)."""
        smarthost = await self.serve(BACKUP)
        gateway = await self.start(self.gateway(free_port(), {"smarthost": f"{BACKUP}:{smarthost.port}"}))
        submit(gateway, ALICE, [BOB, "dave@elsewhere.test"], b"Subject: smarthost\r\n\r\nhi\r\n")
        await eventually(lambda: smarthost.messages, "the smarthost to receive the message")
        await self.queue_empty()
        [session] = smarthost.sessions
        rcpts = sorted(c for c in session.commands if c.startswith("RCPT"))
        self.assertEqual(rcpts, [f"RCPT TO:<{BOB}>", "RCPT TO:<dave@elsewhere.test>"])
        self.assertEqual(self.dns.queries, [])

    async def test_transport_route_is_own_domain_accepted_from_anyone(self) -> None:
        """[relay.transport] "legacy.test" = "smtp:127.0.0.3:PORT": mail for legacy.test goes
        there, and is accepted from a client that may not relay (allowed_networks = [])."""
        legacy = await self.serve(BACKUP)
        gateway = await self.start(self.gateway(free_port(), {
            "allowed_networks": [], "transport": {"legacy.test": f"smtp:{BACKUP}:{legacy.port}"}}))
        with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:
            client.ehlo("client.test")
            self.assertEqual(client.mail("someone@outside.test")[0], 250)
            code, text = client.rcpt(BOB)  # this client may not relay ...
            self.assertEqual((code, text[:5]), (554, b"5.7.1"))
            self.assertEqual(client.rcpt("user@legacy.test")[0], 250)  # ... but legacy.test is ours
            code, reply = client.data(b"Subject: legacy\r\n\r\nold system\r\n")
            self.assertEqual(code, 250, reply)
        await eventually(lambda: legacy.messages, "the legacy.test host to receive the message")
        await self.queue_empty()
        commands = legacy.sessions[0].commands
        self.assertTrue(commands[1].startswith("MAIL FROM:<someone@outside.test>"))
        self.assertEqual([c for c in commands if c.startswith("RCPT")], ["RCPT TO:<user@legacy.test>"])
        # no MX or address lookup; the checks of this unauthenticated client ask for SPF and DMARC records
        self.assertEqual([q for q in self.dns.queries if q[1] != "TXT"], [])

    async def test_bare_newlines_leave_as_crlf(self) -> None:
        """bare_newline = "normalize" (the default): DATA with bare LF line ends and a smuggling
        sequence (<LF>.<LF> then a command) is relayed as one message in canonical CRLF, dot-stuffed;
        not one bare CR or LF reaches the remote server, nor a second message."""
        primary = await self.serve(PRIMARY)
        gateway = await self.start(self.gateway(primary.port))
        client = RawSMTP(gateway.ports["smtp"])
        try:
            self.assertEqual(client.reply()[0], 220)
            self.assertEqual(client.command(b"EHLO client.test")[0], 250)
            self.assertEqual(client.command(f"MAIL FROM:<{ALICE}>".encode())[0], 250)
            self.assertEqual(client.command(f"RCPT TO:<{BOB}>".encode())[0], 250)
            self.assertEqual(client.command(b"DATA")[0], 354)
            client.sock.sendall(b"Subject: bare\nFrom: alice@example.test\r\n\r\nline one\nline two\n.\n"
                                b"MAIL FROM:<evil@x.test>\r\n..stuffed\r\nend\r\n")
            code, text = client.command(b".")
            self.assertEqual(code, 250, text)
            client.command(b"QUIT")
        finally:
            client.close()
        await eventually(lambda: primary.messages, "the MX to receive the message")
        await self.queue_empty()
        [raw] = primary.messages
        self.assertTrue(no_bare_line_ends(raw), raw)
        [received] = primary.message_bodies()
        self.assertTrue(received.endswith(
            b"Subject: bare\r\nFrom: alice@example.test\r\n\r\nline one\r\nline two\r\n\r\n"
            b"MAIL FROM:<evil@x.test>\r\n.stuffed\r\nend\r\n"), received)
        mails = [c for session in primary.sessions for c in session.commands if c.startswith("MAIL")]
        self.assertEqual(len(mails), 1, mails)
        self.assertTrue(mails[0].startswith(f"MAIL FROM:<{ALICE}>"), mails)
        self.assertTrue(no_bare_line_ends(primary.sessions[0].data))


# --- retries, bounces and the queue -------------------------------------------------


class RetryAndBounceTests(GatewayTestCase):
    async def test_451_then_success_on_retry(self) -> None:
        """A 451 defers the message; `queue list --json` shows it waiting (attempts, next
        attempt, last error); once the MX accepts, a retry delivers it, once."""
        primary = await self.serve(PRIMARY, rcpt_default=DEFER)
        gateway = await self.start(self.gateway(primary.port))
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: retried\r\n\r\nagain\r\n")
        await self.attempted(queue_id)

        [item] = await self.queue_list(gateway)
        self.assertEqual((item["id"], item["sender"], item["recipients"]), (queue_id, ALICE, [BOB]))
        self.assertGreaterEqual(item["attempts"], 1)
        self.assertEqual(item["last_error"], DEFER)
        arrived, next_attempt = (datetime.fromisoformat(item[key]) for key in ("arrived", "next_attempt"))
        self.assertIsNotNone(next_attempt.tzinfo)
        self.assertGreater(next_attempt, arrived)
        self.assertLess((next_attempt - arrived).total_seconds(), 30)  # retry_intervals = 1s, 2s
        self.assertEqual(primary.messages, [])

        primary.rcpt_default = ACCEPT
        await eventually(lambda: primary.messages, "delivery on a retry")
        await self.queue_empty()
        self.assertEqual(len(primary.messages), 1)
        mails = [c for session in primary.sessions for c in session.commands if c.startswith("MAIL FROM:")]
        self.assertGreaterEqual(len(mails), 2)  # a second transaction, on the cached session or a new one
        self.assertEqual(await self.queue_list(gateway), [])

    async def test_550_bounces_to_local_sender(self) -> None:
        """A 550 from the MX fails the recipient at once: an RFC 3464 report lands in the
        local sender's Maildir, from <>, naming the recipient and the remote diagnostic."""
        primary = await self.serve(PRIMARY, rcpt_replies={BOB: "550 5.1.1 no such user here"})
        gateway = self.gateway(primary.port)
        gateway.add_user(ALICE)
        await self.start(gateway)
        submit(gateway, ALICE, [BOB], b"Subject: doomed\r\nMessage-ID: <doomed@example.test>\r\n\r\nhi\r\n")
        raw, parsed = await self.bounce_for(gateway, ALICE)
        await self.queue_empty()

        status = self.assertReport(raw, parsed)
        self.assertIn(b"Final-Recipient: rfc822; bob@remote.test", status)
        self.assertIn(b"Action: failed", status)
        self.assertIn(b"Status: 5.1.1", status)
        self.assertIn(b"Remote-MTA: dns; mx1.remote.test", status)
        diagnostic = [line for line in status.splitlines() if line.startswith(b"Diagnostic-Code:")]
        self.assertEqual(len(diagnostic), 1)
        self.assertIn(b"smtp; 550", diagnostic[0])
        self.assertIn(b"no such user here", diagnostic[0])
        self.assertEqual(parsed["To"], ALICE)
        self.assertIn(b"Subject: doomed", raw)  # the original comes back attached
        self.assertEqual(primary.messages, [])  # the only recipient was refused: no DATA

    async def test_expiry_bounces(self) -> None:
        """max_queue_time = 3s and an MX that always says 451: after the last retry the
        message expires and the sender gets a failure report (status 4.4.7)."""
        primary = await self.serve(PRIMARY, rcpt_default=DEFER)
        gateway = self.gateway(primary.port, {"max_queue_time": "3s"})
        gateway.add_user(ALICE)
        await self.start(gateway)
        submit(gateway, ALICE, [BOB], b"Subject: too slow\r\n\r\nhi\r\n")
        raw, parsed = await self.bounce_for(gateway, ALICE, seconds=30)
        await self.queue_empty()

        status = self.assertReport(raw, parsed)
        self.assertIn(b"Final-Recipient: rfc822; bob@remote.test", status)
        self.assertIn(b"Action: failed", status)
        self.assertIn(b"Status: 4.4.7", status)
        self.assertIn(b"expired", status)
        self.assertIn(b"mailbox busy", status.replace(b"\n ", b" "))  # the last error, unfolded
        self.assertGreaterEqual(len(primary.sessions), 2)
        self.assertEqual(primary.messages, [])

    async def test_no_bounce_for_null_sender(self) -> None:
        """MAIL FROM:<> refused with 550: the message is dropped, no bounce goes anywhere
        (no Maildir, no queue entry, no second connection), so bounces cannot loop."""
        primary = await self.serve(PRIMARY, rcpt_default="550 5.1.1 no such user here")
        gateway = self.gateway(primary.port)
        gateway.add_user(ALICE)
        await self.start(gateway)
        queue_id = submit(gateway, "", [BOB], b"Subject: a bounce itself\r\n\r\nhi\r\n")
        await eventually(lambda: primary.sessions and "QUIT" in primary.sessions[0].commands,
                         "the delivery attempt")
        await self.queue_empty()
        await pause(1.0)  # room for a (wrong) bounce to show up
        self.assertTrue(primary.sessions[0].commands[1].startswith("MAIL FROM:<>"))
        self.assertEqual(self.queue.ids(), [])
        self.assertEqual(self.all_mail(), [])
        self.assertEqual(len(primary.sessions), 1)
        self.assertNotIn(f"{queue_id}B", gateway.log())

    async def test_restart_with_mail_queued_delivers_exactly_once(self) -> None:
        """kill -9 after the client heard 250 (and a first 451 attempt): on restart the
        queue resumes and the message is delivered exactly once."""
        primary = await self.serve(PRIMARY, rcpt_default=DEFER)
        gateway = await self.start(self.gateway(primary.port))
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: survivor\r\n\r\nstill here\r\n")
        await self.attempted(queue_id)
        self.assertEqual(primary.messages, [])
        await self.stop(gateway, signal.SIGKILL)
        self.assertEqual(gateway.process.returncode, -signal.SIGKILL)
        self.assertEqual(self.queue.ids(), [queue_id])

        primary.rcpt_default = ACCEPT
        await self.start(gateway)
        await eventually(lambda: primary.messages, "delivery after the restart")
        await self.queue_empty()
        await pause(2.5)  # longer than any retry interval: a duplicate would have gone by now
        self.assertEqual(len(primary.messages), 1)
        self.assertTrue(primary.message_bodies()[0].endswith(b"Subject: survivor\r\n\r\nstill here\r\n"))
        self.assertIn("queue: resumed 1 queued message(s)", gateway.log())


class QueueCommandTests(GatewayTestCase):
    async def deferred_gateway(self) -> tuple[FakeSMTPServer, Gateway]:
        """A gateway whose next retry is an hour away, and an MX deferring everyone."""
        primary = await self.serve(PRIMARY, rcpt_default=DEFER)
        gateway = await self.start(self.gateway(primary.port, {"retry_intervals": ["1h"]}))
        return primary, gateway

    async def test_flush_sends_deferred_mail_at_once(self) -> None:
        """`mailgate queue flush` makes a message whose next attempt is an hour away go now."""
        primary, gateway = await self.deferred_gateway()
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: flushed\r\n\r\nnow\r\n")
        await self.attempted(queue_id)
        primary.rcpt_default = ACCEPT
        await pause(1.5)
        self.assertEqual(primary.messages, [])  # nothing goes out by itself

        done = await self.cli(gateway, "queue", "flush")
        self.assertEqual(done.returncode, 0, done.stderr)
        await eventually(lambda: primary.messages, "the flushed message", seconds=10)
        await self.queue_empty()
        self.assertEqual(len(primary.messages), 1)
        self.assertEqual(await self.queue_list(gateway), [])

    async def test_delete_removes_one_message(self) -> None:
        """`mailgate queue delete ID` removes that message only: it leaves `queue list`, and
        even a flush with the MX accepting never sends it, while the other one goes."""
        primary, gateway = await self.deferred_gateway()
        doomed = submit(gateway, ALICE, [BOB], b"Subject: delete me\r\n\r\nx\r\n")
        kept = submit(gateway, ALICE, [CAROL], b"Subject: keep me\r\n\r\ny\r\n")
        await self.attempted(doomed)
        await self.attempted(kept)
        self.assertEqual(sorted(item["id"] for item in await self.queue_list(gateway)), sorted([doomed, kept]))

        primary.rcpt_default = ACCEPT
        done = await self.cli(gateway, "queue", "delete", doomed)
        self.assertEqual((done.returncode, done.stdout.strip()), (0, f"deleted {doomed}"), done.stderr)
        self.assertEqual([item["id"] for item in await self.queue_list(gateway)], [kept])
        missing = await self.cli(gateway, "queue", "delete", doomed)
        self.assertEqual(missing.returncode, 1)
        self.assertNotIn("Traceback", missing.stderr + missing.stdout)

        self.assertEqual((await self.cli(gateway, "queue", "flush")).returncode, 0)
        await eventually(lambda: primary.messages, "the kept message", seconds=10)
        await self.queue_empty()
        await pause(1.0)
        [body] = primary.message_bodies()
        self.assertIn(b"Subject: keep me", body)
        self.assertNotIn(b"delete me", b"".join(primary.messages))


# --- regressions: bounces and queue listings as once reported wrong ---


class BounceAndListingRegressionTests(GatewayTestCase):
    async def test_bounce_diagnostic_is_the_remote_reply_verbatim(self) -> None:
        """RFC 3464 2.3.6: Diagnostic-Code carries the reply the remote MTA actually gave,
        enhanced status code included (as Postfix reports it)."""
        primary = await self.serve(PRIMARY, rcpt_replies={BOB: "550 5.1.1 no such user here"})
        gateway = self.gateway(primary.port)
        gateway.add_user(ALICE)
        await self.start(gateway)
        submit(gateway, ALICE, [BOB], b"Subject: doomed\r\n\r\nhi\r\n")
        raw, parsed = await self.bounce_for(gateway, ALICE)
        self.assertIn(b"Diagnostic-Code: smtp; 550 5.1.1 no such user here", self.assertReport(raw, parsed))

    async def test_queue_list_next_attempt_before_first_attempt_ends(self) -> None:
        """A message whose first attempt is still running (the MX is silent after DATA) is
        listed with attempts 0 and a next_attempt no earlier than its arrival."""
        primary = await self.serve(PRIMARY, stall_on="DATA")
        gateway = self.gateway(primary.port)
        self.kill_at_cleanup(gateway)  # a stalled attempt also delays SIGTERM (see below)
        await self.start(gateway)
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: slow\r\n\r\nhi\r\n")
        await eventually(lambda: primary.sessions and "DATA" in primary.sessions[0].commands, "DATA")
        [item] = await self.queue_list(gateway)
        self.assertEqual((item["id"], item["attempts"]), (queue_id, 0))
        self.assertGreaterEqual(datetime.fromisoformat(item["next_attempt"]),
                                datetime.fromisoformat(item["arrived"]))

    async def test_sigterm_aborts_a_stalled_outbound_attempt(self) -> None:
        """SPEC: SIGTERM finishes or cleanly aborts what is in flight and keeps every accepted
        message. With the MX silent after DATA, the gateway still ends within the shutdown
        grace (plus a margin), and the message stays queued for the next start."""
        primary = await self.serve(PRIMARY, stall_on="DATA")
        gateway = self.gateway(primary.port)
        self.kill_at_cleanup(gateway)
        await self.start(gateway)
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: stalled\r\n\r\nhi\r\n")
        await eventually(lambda: primary.sessions and "DATA" in primary.sessions[0].commands, "DATA")
        gateway.process.send_signal(signal.SIGTERM)
        await eventually(lambda: gateway.process.poll() is not None, "mailgate to stop on SIGTERM",
                         SHUTDOWN_GRACE_SECONDS + 5)
        self.assertEqual(self.queue.ids(), [queue_id])
