"""RFC 5321 4.5.3.2's per-command timeouts in the outbound client, on a Clock: no real waiting.

The remote end is driven by hand over a StringTransport; the client runs on
a MemoryReactorClock, so ten minutes pass in one `advance`. The reply after
the final dot gets ten minutes: a server that takes 330 s to commit a
message gets exactly one copy, and one whose reply is lost leaves the entry
marked "may have been delivered".
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.outbound.bounces import BounceSender
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.smtp_transport import SCHEMES, SMTPTransport
from mailgate.outbound.spool import QueueStore
from mailgate.outbound.spooler import Spooler
from mailgate.outbound.transport import HookTransport, RecipientResult
from mailgate.store.maildir_writer import StoredMessage

SENDER, BOB = "alice@example.test", "bob@remote.test"
BODY = b"Subject: slow\n\nthe server takes its time\n"


class OneAddress:
    """A resolver for a host named in the route: one documentation address, no DNS."""

    async def addresses(self, host: str) -> list[str]:
        return ["192.0.2.25"]

    async def mx_hosts(self, domain: str) -> list[str]:
        return [f"mx.{domain}"]


class Remote:
    """The server's end of the client's one connection, spoken by the test."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransportWithDisconnection()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def say(self, *lines: str) -> None:
        self.protocol.dataReceived(b"".join(line.encode() + b"\r\n" for line in lines))

    def heard(self) -> str:
        text = self.transport.value().decode()
        self.transport.clear()
        return text

    def take_the_message(self) -> str:
        """Read the body as the kernel would, block by block, up to and including the dot."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        return self.heard()

    def reset(self) -> None:
        """The connection dies under the client (a reset, a crashed server)."""
        self.transport.connected = False
        self.protocol.connectionLost(Failure(ConnectionLost("connection reset by peer")))

    def up_to_the_dot(self) -> None:
        """Greeting, EHLO, the pipelined MAIL/RCPT/DATA and the body: the client then waits."""
        self.say("220 mx.remote.test ESMTP")
        assert self.heard().startswith("EHLO "), "EHLO"
        self.say("250-mx.remote.test", "250 PIPELINING")
        assert self.heard().endswith("DATA\r\n"), "the pipelined batch"
        self.say("250 2.1.0 sender ok", "250 2.1.5 recipient ok", "354 go ahead")
        assert self.take_the_message().endswith("\r\n.\r\n"), "the message and its dot"


class TimeoutTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.dir = Path(tempfile.mkdtemp(prefix="mailgate-timeouts-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.message = self.dir / "message"
        self.message.write_bytes(BODY)

    def transport(self) -> SMTPTransport:
        """The relay as the service builds it: default timeouts, which are the RFC's."""
        return SMTPTransport(self.reactor, helo_name="gw.example.test", tls_mode="none",
                             resolver=OneAddress())  # type: ignore[arg-type]

    def deliver(self) -> tuple[Deferred[list[RecipientResult]], Remote]:
        relay = self.transport()
        d = Deferred.fromCoroutine(relay.deliver_to_host("mx.remote.test", 25, SENDER, [BOB],
                                                         str(self.message)))
        return d, Remote(self.reactor)

    def waiting_until(self, d: Deferred, seconds: float) -> None:
        """Still waiting just before `seconds` of silence; given up on at `seconds`."""
        self.reactor.advance(seconds - 0.5)
        self.assertNoResult(d)
        self.reactor.advance(0.5)


class PerCommandTimeoutTests(TimeoutTestCase):
    def test_a_final_reply_after_330_seconds_is_accepted_once(self) -> None:
        """The server answers the dot after 330 s (over the 300 s that once applied to every
        reply): delivered, on the one transaction; nothing is left for a second copy."""
        d, remote = self.deliver()
        remote.up_to_the_dot()
        self.reactor.advance(330)
        self.assertFalse(remote.transport.disconnecting)
        remote.say("250 2.0.0 queued as SLOW")
        self.assertEqual(remote.heard(), "QUIT\r\n")
        remote.say("221 2.0.0 bye")
        [result] = self.successResultOf(d)
        self.assertTrue(result.delivered, result)
        self.assertFalse(result.maybe_delivered)

    def test_the_reply_after_the_dot_gets_ten_minutes(self) -> None:
        d, remote = self.deliver()
        remote.up_to_the_dot()
        self.waiting_until(d, 600)
        self.assertTrue(remote.transport.disconnected)
        [result] = self.successResultOf(d)
        self.assertEqual((result.reply.code, result.reply.enhanced), (451, "4.4.2"))
        self.assertIn("end of data: no answer within 600 s", result.reply.text)

    def test_the_greeting_gets_five_minutes(self) -> None:
        d, remote = self.deliver()
        self.waiting_until(d, 300)
        self.assertTrue(remote.transport.disconnected)
        [result] = self.successResultOf(d)
        self.assertIn("greeting: no answer within 300 s", result.reply.text)

    def test_mail_and_rcpt_get_five_minutes_each(self) -> None:
        d, remote = self.deliver()
        remote.say("220 mx.remote.test ESMTP", "250-mx.remote.test", "250 PIPELINING")
        self.reactor.advance(299)
        remote.say("250 2.1.0 sender ok")  # MAIL answered just in time: RCPT's own 300 s start
        self.waiting_until(d, 300)
        [result] = self.successResultOf(d)
        self.assertIn("RCPT: no answer within 300 s", result.reply.text)
        self.assertFalse(result.maybe_delivered)

    def test_data_gets_two_minutes_for_its_354(self) -> None:
        d, remote = self.deliver()
        remote.say("220 mx.remote.test ESMTP", "250-mx.remote.test", "250 PIPELINING")
        remote.say("250 2.1.0 sender ok", "250 2.1.5 recipient ok")
        self.waiting_until(d, 120)
        [result] = self.successResultOf(d)
        self.assertIn("DATA: no answer within 120 s", result.reply.text)
        self.assertFalse(result.maybe_delivered)

    def test_a_server_that_stops_reading_the_message_gets_three_minutes(self) -> None:
        """No block taken for 180 s (the server's window stays shut): the upload is given up,
        and as the dot never went, nothing may have been delivered."""
        d, remote = self.deliver()
        remote.say("220 mx.remote.test ESMTP", "250-mx.remote.test", "250 PIPELINING")
        remote.say("250 2.1.0 sender ok", "250 2.1.5 recipient ok", "354 go ahead")
        self.waiting_until(d, 180)
        [result] = self.successResultOf(d)
        self.assertIn("message data: no answer within 180 s", result.reply.text)
        self.assertFalse(result.maybe_delivered)


class LostAfterTheDotTests(TimeoutTestCase):
    """Postfix: "lost connection ... while sending end of data -- message may be sent more than once"."""

    def test_a_connection_lost_after_the_dot_may_have_delivered(self) -> None:
        d, remote = self.deliver()
        remote.up_to_the_dot()
        remote.reset()
        [result] = self.successResultOf(d)
        self.assertTrue(result.temporary)
        self.assertTrue(result.maybe_delivered)
        self.assertIn("may have been delivered", result.reply.text)
        self.assertEqual(result.remote_mta, "mx.remote.test")

    def test_the_queue_entry_records_it_with_one_log_line(self) -> None:
        """Through the scheduler: the entry stays queued (pending, retried) with
        last_error and the recipient's diagnostic saying it may have been delivered,
        and the log says so once."""
        store = QueueStore(str(self.dir / "queue"))
        run = lambda f, *a: succeed(f(*a))
        spooler = Spooler(store, run, self.reactor.seconds)
        policy = RetryPolicy((60.0,), 3600.0)
        bounces = BounceSender("gw.example.test", 3600.0, store.message_path, run, self._no_bounces)
        relay = self.transport()
        scheduler = Scheduler(spooler, {scheme: relay for scheme in SCHEMES},
                              HookTransport(None, self._no_hooks), bounces, policy, self.reactor, run)
        Deferred.fromCoroutine(scheduler.start())
        header = b"Received: by gw.example.test (mailgate) id Q1;\n\tdate\n"
        message = StoredMessage.build(header, [BODY], len(BODY), BODY.count(b"\n"))
        envelope = Envelope(mail_from=SENDER, rcpt_to=[BOB])
        Deferred.fromCoroutine(spooler.add([("Q1", envelope, [(BOB, Route("smtp:mx.remote.test:25"))], message)]))
        spooler.release(["Q1"])
        with capturedLogs() as events:
            self.reactor.advance(0)
            remote = Remote(self.reactor)
            remote.up_to_the_dot()
            remote.reset()
        entry = store.load("Q1")
        assert entry is not None
        self.assertEqual((entry.attempts, [r.status for r in entry.recipients]), (1, ["pending"]))
        self.assertIn("may have been delivered", entry.last_error or "")
        self.assertIn("may have been delivered", entry.recipients[0].diagnostic or "")
        lines = [formatEvent(event) for event in events]
        self.assertEqual(len([line for line in lines if "may have been delivered" in line]), 1, lines)

    @staticmethod
    async def _no_bounces(*args: Any) -> None:
        raise AssertionError("nothing here bounces")

    @staticmethod
    async def _no_hooks(job: Any) -> bytes:
        raise AssertionError("no plugin route here")
