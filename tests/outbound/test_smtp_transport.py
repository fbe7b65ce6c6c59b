"""Outbound SMTP over real loopback sockets: fake MX servers on 127.0.0.2/3, fake DNS on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailgate.net.dns import MXResolver, make_resolver
from mailgate.core.reply import Reply
from mailgate.outbound.smtp_client import BLOCK_SIZE, Timeouts
from mailgate.outbound.smtp_dialogue import result as _result
from mailgate.outbound.smtp_transport import SMTPTransport
from mailgate.outbound.transport import RecipientResult
from tests.support.fake_dns import FakeDNSServer
from tests.support.fake_smtp import FakeSMTPServer, self_signed_tls_options

PRIMARY, BACKUP = "127.0.0.2", "127.0.0.3"
ZONE = {
    "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
    "mx1.remote.test": {"A": [PRIMARY]},
    "mx2.remote.test": {"A": [BACKUP]},
}
SENDER = "alice@example.test"
RCPTS = ["bob@remote.test", "carol@remote.test", "dave@remote.test"]
SIMPLE = b"Subject: hello\n\nHi there.\n"


def no_bare_line_ends(raw: bytes) -> bool:
    return b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")


class RelayTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dns = FakeDNSServer(ZONE).start()
        self.addCleanup(self.dns.stop)
        resolver = make_resolver([self.dns.nameserver], reactor, timeouts=(0.5,))
        self.mx = MXResolver(resolver, shuffle=lambda group: None)
        # Not self.mktemp(): under pytest that lands in the working tree.
        self.dir = tempfile.mkdtemp(prefix="mailgate-relay-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def stored(self, content: bytes = SIMPLE) -> str:
        path = os.path.join(self.dir, f"msg{len(os.listdir(self.dir))}")
        with open(path, "wb") as handle:
            handle.write(content)
        return path

    async def serve(self, interface: str, port: int = 0, **knobs: Any) -> FakeSMTPServer:
        server = FakeSMTPServer(**knobs)
        await server.start(interface, port)
        self.addCleanup(server.stop)
        return server

    def relay(self, port: int, **options: Any) -> SMTPTransport:
        settings: dict[str, Any] = dict(helo_name="gw.example.test", tls_mode="none", resolver=self.mx,
                                        mx_port=port, timeouts=Timeouts.uniform(5), connect_timeout_seconds=5)
        settings.update(options)
        return SMTPTransport(reactor, **settings)

    async def by_mx(self, relay: SMTPTransport, content: bytes = SIMPLE,
                    recipients: list[str] = RCPTS) -> list[RecipientResult]:
        return await relay.deliver_by_mx("remote.test", SENDER, recipients, self.stored(content))

    def assertAll(self, results: list[RecipientResult], code: int, enhanced: str) -> None:
        self.assertEqual([(r.reply.code, r.reply.enhanced) for r in results], [(code, enhanced)] * len(results))


class DeliveryTests(RelayTestCase):
    async def test_all_recipients_in_one_connection(self) -> None:
        server = await self.serve(PRIMARY)
        results = await self.by_mx(self.relay(server.port))
        self.assertEqual([r.recipient for r in results], RCPTS)
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual(results[0], RecipientResult(RCPTS[0], Reply(250, "2.0.0", "queued as FAKE"), "mx1.remote.test",
                                                    success_action="relayed"))
        [session] = server.sessions
        self.assertEqual(session.commands[0], "EHLO gw.example.test")
        self.assertTrue(session.commands[1].startswith("MAIL FROM:<alice@example.test> SIZE="))
        self.assertIn("BODY=8BITMIME", session.commands[1])
        self.assertEqual(session.commands[2:6], [f"RCPT TO:<{r}>" for r in RCPTS] + ["DATA"])
        self.assertEqual(session.commands[-1], "QUIT")
        self.assertEqual(server.message_bodies(), [SIMPLE.replace(b"\n", b"\r\n")])

    async def test_primary_down_backup_used(self) -> None:
        backup = await self.serve(BACKUP)  # nothing listens on PRIMARY at this port
        results = await self.by_mx(self.relay(backup.port))
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual({r.remote_mta for r in results}, {"mx2.remote.test"})
        self.assertEqual(len(backup.messages), 1)

    async def test_primary_refusing_greeting_backup_used(self) -> None:
        backup = await self.serve(BACKUP)
        primary = await self.serve(PRIMARY, backup.port, greeting="554 5.3.2 not today")
        results = await self.by_mx(self.relay(backup.port))
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual(primary.sessions[0].commands, ["QUIT"])
        self.assertEqual(primary.messages, [])

    async def test_every_host_down_is_temporary(self) -> None:
        server = await self.serve(BACKUP)
        await server.stop()
        results = await self.by_mx(self.relay(server.port))
        self.assertAll(results, 451, "4.4.1")
        self.assertIn("connection failed", results[0].reply.one_line)
        self.assertIsNone(results[0].remote_mta)
        self.assertTrue(results[0].temporary)

    async def test_mixed_recipient_results(self) -> None:
        server = await self.serve(PRIMARY, rcpt_replies={
            RCPTS[1]: "550 5.1.1 no such user", RCPTS[2]: "451 4.2.1 mailbox busy"})
        results = await self.by_mx(self.relay(server.port))
        self.assertEqual([(r.reply.code, r.reply.enhanced) for r in results], [(250, "2.0.0"), (550, "5.1.1"), (451, "4.2.1")])
        self.assertEqual([(r.delivered, r.permanent, r.temporary) for r in results],
                         [(True, False, False), (False, True, False), (False, False, True)])
        self.assertEqual(results[1].reply.one_line, "no such user")
        self.assertEqual(str(results[1].reply), "550 5.1.1 no such user")
        self.assertEqual(len(server.messages), 1)

    async def test_data_451_defers_everyone(self) -> None:
        server = await self.serve(PRIMARY, final_reply="451 4.3.0 try again later")
        results = await self.by_mx(self.relay(server.port))
        self.assertAll(results, 451, "4.3.0")
        self.assertTrue(all(r.temporary for r in results))

    async def test_no_recipient_accepted_sends_rset_not_the_message(self) -> None:
        server = await self.serve(PRIMARY, rcpt_default="550 5.1.1 unknown")
        results = await self.by_mx(self.relay(server.port))
        self.assertAll(results, 550, "5.1.1")
        self.assertEqual(server.messages, [])
        self.assertIn("RSET", server.sessions[0].commands)

    async def test_mail_from_refused(self) -> None:
        server = await self.serve(PRIMARY, pipelining=False, mail_reply="553 5.7.1 sender rejected")
        results = await self.by_mx(self.relay(server.port))
        self.assertAll(results, 553, "5.7.1")
        self.assertFalse(any(c.startswith("RCPT") for c in server.sessions[0].commands))

    async def test_multiline_greeting(self) -> None:
        server = await self.serve(PRIMARY, greeting="220-mx.fake.test hello\r\n220-more\r\n220 ready")
        results = await self.by_mx(self.relay(server.port))
        self.assertTrue(all(r.delivered for r in results))

    async def test_pipelined_mail_from_refused(self) -> None:
        """The pipelined RCPTs and DATA are answered but ignored; the MAIL reply decides."""
        server = await self.serve(PRIMARY, mail_reply="553 5.7.1 sender rejected")
        results = await self.by_mx(self.relay(server.port))
        self.assertAll(results, 553, "5.7.1")
        self.assertEqual(server.sessions[0].commands[-2:], ["RSET", "QUIT"])

    async def test_reply_without_enhanced_code(self) -> None:
        server = await self.serve(PRIMARY, final_reply="250 ok thanks")
        results = await self.by_mx(self.relay(server.port))
        self.assertEqual((results[0].reply.enhanced, results[0].reply.one_line), ("2.0.0", "ok thanks"))

    async def test_helo_fallback_and_null_sender(self) -> None:
        server = await self.serve(PRIMARY, ehlo_reply="502 5.5.1 what is EHLO")
        relay = self.relay(server.port)
        results = await relay.deliver_by_mx("remote.test", "", RCPTS[:1], self.stored())
        self.assertTrue(results[0].delivered)
        commands = server.sessions[0].commands
        self.assertEqual(commands[:3], ["EHLO gw.example.test", "HELO gw.example.test", "MAIL FROM:<>"])

    async def test_smarthost_route(self) -> None:
        server = await self.serve("127.0.0.1")
        relay = self.relay(1)  # mx_port must not matter
        results = await relay.deliver_to_host("127.0.0.1", server.port, SENDER, RCPTS, self.stored())
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual(results[0].remote_mta, "127.0.0.1")
        self.assertEqual(self.dns.queries, [])

    async def test_smarthost_by_name(self) -> None:
        server = await self.serve(PRIMARY)
        results = await self.relay(1).deliver_to_host("mx1.remote.test", server.port, SENDER, RCPTS,
                                                     self.stored())
        self.assertTrue(all(r.delivered for r in results))
        self.assertNotIn(("mx1.remote.test", "MX"), self.dns.queries)


class PipeliningTests(RelayTestCase):
    async def test_pipelined_batch_in_one_read(self) -> None:
        server = await self.serve(PRIMARY, pipelining=True)
        await self.by_mx(self.relay(server.port))
        batch = [c for c in server.sessions[0].chunks if c.startswith(b"MAIL FROM:")]
        self.assertEqual(len(batch), 1)
        self.assertEqual(batch[0].count(b"RCPT TO:"), 3)
        self.assertTrue(batch[0].endswith(b"DATA\r\n"))

    async def test_lockstep_without_pipelining(self) -> None:
        server = await self.serve(PRIMARY, pipelining=False)
        results = await self.by_mx(self.relay(server.port))
        self.assertTrue(all(r.delivered for r in results))
        command_chunks = [c for c in server.sessions[0].chunks if c[:4] in (b"MAIL", b"RCPT", b"DATA")]
        self.assertEqual(len(command_chunks), 5)  # MAIL, 3 RCPT, DATA: one each

    async def test_lockstep_mixed(self) -> None:
        server = await self.serve(PRIMARY, pipelining=False, rcpt_replies={RCPTS[0]: "550 5.1.1 no"})
        results = await self.by_mx(self.relay(server.port))
        self.assertEqual([r.reply.code for r in results], [550, 250, 250])


class WireFormatTests(RelayTestCase):
    async def test_bare_line_ends_and_dots(self) -> None:
        """LF, bare CR and CRLF all leave as CRLF; leading dots are doubled."""
        server = await self.serve(PRIMARY)
        content = b".first\nSubject: t\n\n.dot\nbare cr\rnext\r\ncrlf\n..two\n.\nlast"
        await self.by_mx(self.relay(server.port), content)
        self.assertEqual(server.messages[0],
                         b"..first\r\nSubject: t\r\n\r\n..dot\r\nbare cr\r\nnext\r\ncrlf\r\n"
                         b"...two\r\n..\r\nlast\r\n.\r\n")

    async def test_block_boundaries(self) -> None:
        """A CRLF split across 64 KiB blocks stays one line end; a dot after a boundary is stuffed."""
        server = await self.serve(PRIMARY)
        content = b"a" * (BLOCK_SIZE - 1) + b"\r\n.b\n" + b"c" * (BLOCK_SIZE - 3) + b"\n.d\r"
        await self.by_mx(self.relay(server.port), content)
        raw = server.messages[0]
        self.assertTrue(no_bare_line_ends(raw))
        self.assertEqual(raw, b"a" * (BLOCK_SIZE - 1) + b"\r\n..b\r\n" + b"c" * (BLOCK_SIZE - 3)
                         + b"\r\n..d\r\n.\r\n")

    async def test_empty_message(self) -> None:
        server = await self.serve(PRIMARY)
        await self.by_mx(self.relay(server.port), b"")
        self.assertEqual(server.messages, [b".\r\n"])

    async def test_five_megabytes_stream_intact(self) -> None:
        server = await self.serve(PRIMARY)
        content = self._big()
        results = await self.by_mx(self.relay(server.port), content)
        self.assertTrue(all(r.delivered for r in results))
        self.assertTrue(no_bare_line_ends(server.messages[0]))
        self.assertEqual(server.message_bodies(), [content.replace(b"\n", b"\r\n")])
        size = int(server.sessions[0].commands[1].split("SIZE=")[1].split()[0])
        self.assertEqual(size, len(content.replace(b"\n", b"\r\n")))

    async def test_five_megabytes_over_tls(self) -> None:
        options, _cert = self_signed_tls_options(self.dir, "mx1.remote.test")
        server = await self.serve(PRIMARY, starttls=True, tls_options=options)
        content = self._big()
        results = await self.by_mx(self.relay(server.port, tls_mode="opportunistic"), content)
        self.assertTrue(all(r.delivered for r in results))
        self.assertTrue(server.sessions[0].tls)
        self.assertEqual(server.message_bodies(), [content.replace(b"\n", b"\r\n")])

    @staticmethod
    def _big() -> bytes:
        line = b"x" * 75 + b"\n"
        body = b"".join((b"." if i % 100 == 0 else b"y") + line for i in range(5_000_000 // 77))
        return b"Subject: big\n\n" + body


class TLSTests(RelayTestCase):
    def tls_server_options(self, hostname: str = "mx1.remote.test") -> tuple[Any, str]:
        return self_signed_tls_options(self.dir, hostname)

    async def test_opportunistic_accepts_self_signed(self) -> None:
        options, _ = self.tls_server_options()
        server = await self.serve(PRIMARY, starttls=True, tls_options=options)
        results = await self.by_mx(self.relay(server.port, tls_mode="opportunistic"))
        self.assertTrue(all(r.delivered for r in results))
        session = server.sessions[0]
        self.assertTrue(session.tls)
        self.assertEqual([c for c in session.commands if c.startswith(("EHLO", "STARTTLS"))],
                         ["EHLO gw.example.test", "STARTTLS", "EHLO gw.example.test"])

    async def test_none_ignores_starttls(self) -> None:
        options, _ = self.tls_server_options()
        server = await self.serve(PRIMARY, starttls=True, tls_options=options)
        await self.by_mx(self.relay(server.port, tls_mode="none"))
        self.assertFalse(server.sessions[0].tls)
        self.assertNotIn("STARTTLS", server.sessions[0].commands)

    async def test_verify_rejects_self_signed(self) -> None:
        options, _ = self.tls_server_options()
        server = await self.serve(PRIMARY, starttls=True, tls_options=options)
        relay = self.relay(1, tls_mode="verify")
        results = await relay.deliver_to_host("mx1.remote.test", server.port, SENDER, RCPTS, self.stored())
        self.assertAll(results, 451, "4.7.5")
        self.assertIn("TLS failed", results[0].reply.one_line)
        self.assertEqual(server.messages, [])

    async def test_verify_accepts_trusted_matching_certificate(self) -> None:
        options, cert_path = self.tls_server_options("mx1.remote.test")
        server = await self.serve(PRIMARY, starttls=True, tls_options=options)
        results = await self.by_mx(self.relay(server.port, tls_mode="verify",
                                              client_tls_options=self._trusting(cert_path)))
        self.assertTrue(all(r.delivered for r in results))
        self.assertTrue(server.sessions[0].tls)

    async def test_verify_rejects_name_mismatch_then_uses_backup(self) -> None:
        wrong, wrong_cert = self.tls_server_options("other.test")
        right, right_cert = self.tls_server_options("mx2.remote.test")
        backup = await self.serve(BACKUP, starttls=True, tls_options=right)
        primary = await self.serve(PRIMARY, backup.port, starttls=True, tls_options=wrong)
        trust = {"mx1.remote.test": wrong_cert, "mx2.remote.test": right_cert}
        relay = self.relay(backup.port, tls_mode="verify",
                           client_tls_options=lambda host: self._trusting(trust[host])(host))
        results = await self.by_mx(relay)
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual(results[0].remote_mta, "mx2.remote.test")
        self.assertEqual(primary.messages, [])

    async def test_verify_smarthost_by_address(self) -> None:
        """A smarthost given as an IP is checked against the certificate's IP SAN."""
        options, cert_path = self.tls_server_options("relay.example.test")  # SANs include 127.0.0.1
        server = await self.serve("127.0.0.1", starttls=True, tls_options=options)
        relay = self.relay(1, tls_mode="verify", client_tls_options=self._trusting(cert_path))
        results = await relay.deliver_to_host("127.0.0.1", server.port, SENDER, RCPTS, self.stored())
        self.assertTrue(all(r.delivered for r in results))
        self.assertTrue(server.sessions[0].tls)

    async def test_verify_requires_starttls(self) -> None:
        server = await self.serve(PRIMARY, starttls=False)
        relay = self.relay(1, tls_mode="verify")
        results = await relay.deliver_to_host("mx1.remote.test", server.port, SENDER, RCPTS, self.stored())
        self.assertAll(results, 451, "4.7.4")
        self.assertEqual(server.messages, [])

    async def test_opportunistic_falls_back_to_plain_text_after_handshake_failure(self) -> None:
        options, _ = self.tls_server_options()
        server = await self.serve(PRIMARY, starttls=True, tls_options=options)
        relay = self.relay(server.port, tls_mode="opportunistic", client_tls_options=optionsForClientTLS)
        results = await self.by_mx(relay)
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual(len(server.sessions), 2)
        self.assertNotIn("STARTTLS", server.sessions[1].commands)

    @staticmethod
    def _trusting(cert_path: str) -> Any:
        with open(cert_path, "rb") as handle:
            root = Certificate.loadPEM(handle.read())
        return lambda host: optionsForClientTLS(host, trustRoot=root)


class ConnectionCacheTests(RelayTestCase):
    """relay.connection_cache_time: the next message to the same host takes the open session."""

    def cached_relay(self, port: int, seconds: float = 30.0) -> SMTPTransport:
        relay = self.relay(port, connection_cache_seconds=seconds)
        self.addCleanup(relay.close_idle)  # runs before the servers' cleanups
        return relay

    async def delivered_on_a_new_session(self, server: FakeSMTPServer, relay: SMTPTransport) -> None:
        results = await self.by_mx(relay)
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual((len(server.sessions), len(server.messages)), (2, 2))

    async def test_a_second_message_reuses_the_session(self) -> None:
        server = await self.serve(PRIMARY)
        relay = self.cached_relay(server.port)
        for _ in range(2):
            results = await self.by_mx(relay)
            self.assertTrue(all(r.delivered for r in results))
        [session] = server.sessions
        verbs = [command.split(" ")[0].split(":")[0] for command in session.commands]
        self.assertEqual(verbs.count("EHLO"), 1)
        self.assertEqual(verbs.count("MAIL"), 2)
        self.assertNotIn("QUIT", verbs)
        self.assertEqual(len(server.messages), 2)
        [live] = server._live
        await relay.close_idle()
        await live.lost
        self.assertEqual(session.commands[-1], "QUIT")

    async def test_an_unused_session_says_quit_when_its_time_is_up(self) -> None:
        server = await self.serve(PRIMARY)
        relay = self.cached_relay(server.port, seconds=0.2)
        await self.by_mx(relay)
        [live] = server._live
        await live.lost  # closed by the cache's timer, not by the test
        self.assertEqual(server.sessions[0].commands[-1], "QUIT")

    async def test_a_session_the_server_closed_is_replaced(self) -> None:
        server = await self.serve(PRIMARY)
        relay = self.cached_relay(server.port)
        await self.by_mx(relay)
        [live] = server._live
        live.transport.loseConnection()  # the server's idle timeout
        await live.lost
        await self.delivered_on_a_new_session(server, relay)

    async def test_a_session_dying_under_its_first_command_is_replaced(self) -> None:
        server = await self.serve(PRIMARY)
        relay = self.cached_relay(server.port)
        await self.by_mx(relay)
        [live] = server._live
        live.do_MAIL = lambda text: live.transport.abortConnection()  # closed before any reply
        await self.delivered_on_a_new_session(server, relay)

    async def test_a_verified_session_is_only_reused_for_its_host(self) -> None:
        server = await self.serve(PRIMARY)
        relay = self.cached_relay(server.port)
        await self.by_mx(relay)
        await relay.deliver_to_host(PRIMARY, server.port, SENDER, ["x@other.test"], self.stored())
        self.assertEqual(len(server.sessions), 2)  # same address, another name: a new session


class FailureTests(RelayTestCase):
    async def test_silent_server_times_out(self) -> None:
        server = await self.serve("127.0.0.1", stall_on="CONNECT")
        relay = self.relay(1, timeouts=Timeouts.uniform(0.3))
        results = await relay.deliver_to_host("127.0.0.1", server.port, SENDER, RCPTS, self.stored())
        self.assertAll(results, 451, "4.4.2")
        self.assertIn("greeting: no answer within 0.3 s", results[0].reply.one_line)

    async def test_no_final_reply_times_out(self) -> None:
        server = await self.serve(PRIMARY, stall_on=".")
        results = await self.by_mx(self.relay(server.port, timeouts=Timeouts.uniform(0.3)))
        self.assertAll(results, 451, "4.4.2")
        self.assertEqual(results[0].remote_mta, "mx1.remote.test")
        self.assertEqual(len(server.messages), 1)  # it arrived; only the answer is missing
        self.assertTrue(all(r.maybe_delivered for r in results))
        self.assertIn("may have been delivered", results[0].reply.text)

    async def test_dropped_connection_tries_next_host(self) -> None:
        backup = await self.serve(BACKUP)
        primary = await self.serve(PRIMARY, backup.port, drop_connections=True)
        results = await self.by_mx(self.relay(backup.port))
        self.assertTrue(all(r.delivered for r in results))
        self.assertEqual(len(primary.sessions), 1)

    async def test_null_mx_fails_everyone_permanently(self) -> None:
        self.dns.null_mx("remote.test")
        results = await self.by_mx(self.relay(25))
        self.assertAll(results, 556, "5.1.10")
        self.assertTrue(results[0].permanent)

    async def test_dns_servfail_is_temporary(self) -> None:
        self.dns.fail("remote.test", "servfail")
        results = await self.by_mx(self.relay(25))
        self.assertAll(results, 451, "4.4.3")

    async def test_unknown_domain_is_permanent(self) -> None:
        results = await self.relay(25).deliver_by_mx("nowhere.test", SENDER, RCPTS, self.stored())
        self.assertAll(results, 550, "5.1.2")

    async def test_mx_hosts_without_address_are_permanent(self) -> None:
        self.dns.records["remote.test"] = {"MX": [(10, "ghost1.remote.test"), (20, "ghost2.remote.test")]}
        results = await self.by_mx(self.relay(25))
        self.assertAll(results, 550, "5.1.2")

    async def test_unexpected_error_is_temporary_and_logged(self) -> None:
        server = await self.serve(PRIMARY)
        relay = self.relay(server.port)
        results = await relay.deliver_by_mx("remote.test", SENDER, RCPTS, os.path.join(self.dir, "missing"))
        self.assertAll(results, 451, "4.3.0")
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)


class ResultTests(SynchronousTestCase):
    def test_a_server_without_enhanced_codes_gets_x00(self) -> None:
        self.assertEqual(_result(Reply.from_lines(550, ["4.1.1 odd"]), "x", "h").reply.enhanced, "5.0.0")
        result = _result(Reply.from_lines(250, ["2.0.0 first", "2.0.0 second"]), "x", "h")
        self.assertEqual((result.reply.enhanced, result.reply.one_line), ("2.0.0", "first second"))