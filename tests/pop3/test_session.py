"""Tests for mailgate.pop3.session: the session state machine over StringTransport and Clock."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from mailgate.store import maildir_reader as mailbox
from mailgate.pop3 import streaming as pop3_stream
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.store.maildir_writer import StoredMessage, deliver_durably
from mailgate.core.wire import DotStuffer
from mailgate.pop3.auth_commands import PENALTY, PLAINTEXT_REFUSED, TOO_MANY_FAILURES
from mailgate.pop3.session import POP3Factory
from mailgate.pop3.streaming import MessageSender, TopLimiter
from tests.support.pop3_session import FakeAccounts, FakeReactor, TLSCapableTransport, message_name, unstuff

ALICE = "alice@example.test"
PASSWORD = "correct horse"
TLS_OPTIONS = object()  # the session only hands it to transport.startTLS


class SessionTestCase(SynchronousTestCase):
    plaintext_auth = "always"
    tls_options: object = TLS_OPTIONS

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root, True)
        self.reactor = FakeReactor()
        self.accounts = FakeAccounts({ALICE: PASSWORD, "bob@example.test": "bobpw"})
        self.factory = POP3Factory(
            accounts=self.accounts,
            maildir_root=self.root,
            hostname="mail.example.test",
            tls_options=self.tls_options,
            plaintext_auth=self.plaintext_auth,
            reactor=self.reactor,
            throttle=AuthThrottle(self.reactor),
        )
        self.mailbox = os.path.join(self.root, "example.test", "alice")
        self.protocol, self.transport = self.connect()

    def connect(self, peer_ip: str = "192.0.2.7") -> tuple[Any, TLSCapableTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = TLSCapableTransport(peer_ip)
        protocol.makeConnection(transport)
        return protocol, transport

    def deliver(self, *messages: bytes) -> None:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.mailbox, sub), exist_ok=True)
        for n, data in enumerate(messages):
            with open(os.path.join(self.mailbox, "new", message_name(n, data)), "wb") as handle:
                handle.write(data)

    def send(self, data: bytes, protocol: Any = None, transport: Any = None) -> bytes:
        """Feed client bytes, run any producer to the end, return what the server wrote."""
        protocol, transport = protocol or self.protocol, transport or self.transport
        transport.clear()
        protocol.dataReceived(data)
        while transport.producer is not None:
            transport.producer.resumeProducing()
        return transport.value()

    def login(self, protocol: Any = None, transport: Any = None, user: str = ALICE, password: str = PASSWORD) -> bytes:
        return self.send(f"USER {user}\r\nPASS {password}\r\n".encode(), protocol, transport)

    def retr(self, number: int) -> bytes:
        """RETR n's message as the client sees it: unstuffed, CRLF."""
        reply = self.send(b"RETR %d\r\n" % number)
        first, _, rest = reply.partition(b"\r\n")
        self.assertTrue(first.startswith(b"+OK"), reply)
        self.assertTrue(rest.endswith(b"\r\n.\r\n") or rest == b".\r\n", rest[-20:])
        return unstuff(rest[: -len(b".\r\n")])


class GreetingAndCapaTests(SessionTestCase):
    plaintext_auth = "tls"

    def test_greeting_and_no_delay(self) -> None:
        self.assertTrue(self.transport.value().startswith(b"+OK mail.example.test"))
        self.assertTrue(self.transport.no_delay, "Nagle makes pipelined POP3 crawl")

    def test_capa_before_tls_hides_user(self) -> None:
        """Like Dovecot: no USER/SASL offered where they would be refused."""
        capa = self.send(b"CAPA\r\n").split(b"\r\n")
        self.assertEqual(capa[0], b"+OK")
        for name in (b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"STLS", b"IMPLEMENTATION mailgate"):
            self.assertIn(name, capa)
        self.assertNotIn(b"USER", capa)
        self.assertNotIn(b"SASL PLAIN", capa)
        self.assertEqual(capa[-2:], [b".", b""])

    def test_plaintext_refused_before_tls(self) -> None:
        self.assertTrue(self.send(b"USER alice@example.test\r\n").startswith(b"-ERR [AUTH] "))
        self.assertTrue(self.send(b"PASS x\r\n").startswith(b"-ERR [AUTH] "))
        self.assertTrue(self.send(b"AUTH PLAIN AGFAYg==\r\n").startswith(b"-ERR [AUTH] "))
        self.assertEqual(self.send(b"AUTH\r\n"), b"+OK\r\n.\r\n")

    def test_stls_then_user_is_allowed(self) -> None:
        self.assertEqual(self.send(b"STLS\r\n"), b"+OK Begin TLS negotiation now.\r\n")
        self.assertIs(self.transport.tls_started_with, TLS_OPTIONS)
        capa = self.send(b"CAPA\r\n").split(b"\r\n")
        self.assertIn(b"USER", capa)
        self.assertIn(b"SASL PLAIN", capa)
        self.assertNotIn(b"STLS", capa)
        self.assertEqual(self.send(b"STLS\r\n"), b"-ERR TLS is already active.\r\n")
        self.assertIn(b"+OK Logged in.", self.login())

    def test_commands_pipelined_after_stls_are_discarded(self) -> None:
        """RFC 2595 section 4 / CVE-2011-0411 style injection: nothing crosses the handshake."""
        reply = self.send(b"USER bob@example.test\r\nSTLS\r\nUSER alice@example.test\r\nPASS corr")
        self.assertEqual(reply, PLAINTEXT_REFUSED + b"\r\n+OK Begin TLS negotiation now.\r\n")
        # the half line "PASS corr" was dropped too: its rest is no command
        self.assertEqual(self.send(b"ect horse\r\n"), b"-ERR Unknown command.\r\n")
        self.assertEqual(self.send(b"PASS correct horse\r\n"), b"-ERR No user name given.\r\n")

    def test_implicit_tls_transport_is_secure(self) -> None:
        """Behind TLSMemoryBIOFactory (995 style) STLS is not offered and USER works."""
        protocol = self.factory.buildProtocol(None)
        transport = TLSCapableTransport()
        directlyProvides(transport, ISSLTransport)
        protocol.makeConnection(transport)
        capa = self.send(b"CAPA\r\n", protocol, transport).split(b"\r\n")
        self.assertNotIn(b"STLS", capa)
        self.assertIn(b"USER", capa)


class NoTLSTests(SessionTestCase):
    tls_options = None

    def test_stls_unavailable(self) -> None:
        self.assertNotIn(b"STLS", self.send(b"CAPA\r\n").split(b"\r\n"))
        self.assertTrue(self.send(b"STLS\r\n").startswith(b"-ERR "))
        self.assertIsNone(self.transport.tls_started_with)


class AuthorizationTests(SessionTestCase):
    def test_login_and_wrong_state_commands(self) -> None:
        self.assertTrue(self.send(b"STAT\r\n").startswith(b"-ERR"))
        self.assertTrue(self.send(b"PASS x\r\n").startswith(b"-ERR No user name"))
        self.assertEqual(self.login(), b"+OK\r\n+OK Logged in.\r\n")
        self.assertEqual(self.send(b"STAT\r\n"), b"+OK 0 0\r\n")  # no mailbox yet = empty
        self.assertTrue(self.send(b"USER x\r\n").startswith(b"-ERR"))
        self.assertTrue(self.send(b"STLS\r\n").startswith(b"-ERR"))

    def test_user_name_is_case_insensitive(self) -> None:
        self.assertIn(b"+OK Logged in.", self.login(user="Alice@Example.Test"))

    def test_bad_password_is_answered_late(self) -> None:
        reply = self.login(password="wrong")
        self.assertEqual(reply, b"+OK\r\n")
        self.reactor.advance(0.9)
        self.assertEqual(self.transport.value(), b"+OK\r\n")
        self.reactor.advance(0.1)
        self.assertEqual(self.transport.value(), b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n")

    def test_commands_wait_for_the_password_check(self) -> None:
        """Pipelined commands run in order even when PASS takes a thread round trip."""
        self.reactor.pool.held = True
        reply = self.send(b"USER alice@example.test\r\nPASS correct horse\r\nSTAT\r\nNOOP\r\n")
        self.assertEqual(reply, b"+OK\r\n")
        self.transport.clear()
        self.reactor.pool.release()  # verify() done; the listing is queued next
        self.reactor.pool.release()
        self.assertEqual(self.transport.value(), b"+OK Logged in.\r\n+OK 0 0\r\n+OK\r\n")

    def test_reading_pauses_while_a_backlog_waits(self) -> None:
        """A client pipelining without reading replies can't grow the queue without bound."""
        self.reactor.pool.held = True
        self.send(b"USER alice@example.test\r\nPASS correct horse\r\n" + b"NOOP\r\n" * 300)
        self.assertEqual(self.transport.producerState, "paused")
        self.reactor.pool.release()
        self.reactor.pool.release()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.transport.value().count(b"+OK\r\n"), 301)

    def test_repeated_failures_disconnect_and_lock_the_account_from_that_address(self) -> None:
        for attempt in range(5):
            self.assertFalse(self.transport.disconnecting, attempt)
            self.login(user="bob@example.test", password="wrong")
            self.reactor.advance(8)
        self.assertTrue(self.transport.value().endswith(TOO_MANY_FAILURES + b"\r\n"))
        self.assertTrue(self.transport.disconnecting)
        protocol, transport = self.connect()  # same IP and account, new connection: refused, even the right password
        self.assertIn(b"Too many", self.login(protocol, transport, user="bob@example.test", password="bobpw"))
        self.assertTrue(transport.disconnecting)
        protocol, transport = self.connect("192.0.2.99")  # bob from elsewhere
        self.assertIn(b"+OK Logged in.", self.login(protocol, transport, user="bob@example.test", password="bobpw"))

    def test_attempt_during_the_penalty_is_refused_unchecked(self) -> None:
        self.login(password="wrong")  # its answer is due in 1 s
        protocol, transport = self.connect()
        self.assertEqual(self.login(protocol, transport), b"+OK\r\n" + PENALTY + b"\r\n")
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertIn(b"+OK Logged in.", self.login(protocol, transport))

    def test_others_behind_the_same_address_still_log_in(self) -> None:
        """A shared (NAT) address: bad passwords for one account do not lock out another one's owner."""
        for _ in range(5):
            self.login(user="bob@example.test", password="wrong")
            self.reactor.advance(8)
        protocol, transport = self.connect()  # 192.0.2.7 again
        self.assertIn(b"+OK Logged in.", self.login(protocol, transport))

    def test_many_failures_from_one_address_lock_it_out(self) -> None:
        """limits.auth_failures_per_ip: far more than for one account, whatever the accounts tried."""
        self.factory.throttle = self.protocol._state._throttle = AuthThrottle(self.reactor, failures_per_ip=12)
        for n in range(12):
            protocol, transport = self.connect()
            self.login(protocol, transport, user=f"user{n}@example.test", password="wrong")
            self.reactor.advance(1)
        protocol, transport = self.connect()
        self.assertIn(b"Too many", self.login(protocol, transport))
        protocol, transport = self.connect("192.0.2.99")
        self.assertIn(b"+OK Logged in.", self.login(protocol, transport))

    def test_store_failure_is_temporary(self) -> None:
        self.accounts.broken = True
        self.assertEqual(self.login(), b"+OK\r\n-ERR [SYS/TEMP] Temporary authentication failure.\r\n")
        self.assertEqual(self.flushLoggedErrors(OSError)[0].type, OSError)

    def test_mailbox_in_use(self) -> None:
        self.login()
        protocol, transport = self.connect("192.0.2.8")
        self.assertIn(b"-ERR [IN-USE] ", self.login(protocol, transport))
        self.protocol.connectionLost(None)  # lock released on disconnect
        self.assertIn(b"+OK Logged in.", self.login(protocol, transport))

    def test_sasl_plain(self) -> None:
        token = base64.b64encode(b"\x00alice@example.test\x00correct horse")
        self.assertEqual(self.send(b"AUTH\r\n"), b"+OK\r\nPLAIN\r\n.\r\n")
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), b"+ \r\n")
        self.assertEqual(self.send(token + b"\r\n"), b"+OK Logged in.\r\n")

    def test_sasl_plain_initial_response_abort_and_garbage(self) -> None:
        self.assertEqual(self.send(b"AUTH PLAIN\r\n*\r\n"), b"+ \r\n-ERR Authentication aborted.\r\n")
        self.assertIn(b"-ERR [AUTH] Invalid base64", self.send(b"AUTH PLAIN !!!\r\n"))
        self.assertIn(b"-ERR Unsupported", self.send(b"AUTH CRAM-MD5\r\n"))
        bad = base64.b64encode(b"bob@example.test\x00alice@example.test\x00correct horse")
        self.assertIn(b"-ERR [AUTH] ", self.send(b"AUTH PLAIN " + bad + b"\r\n"))
        good = base64.b64encode(b"alice@example.test\x00alice@example.test\x00correct horse")
        self.assertEqual(self.send(b"AUTH PLAIN " + good + b"\r\n"), b"+OK Logged in.\r\n")

    def test_sasl_plain_malformed_is_answered_at_once(self) -> None:
        """RFC 4616: an empty authcid or passwd, or bytes that are not UTF-8, are malformed, not a failed login."""
        for message in (b"\x00\x00correct horse", b"\x00alice@example.test\x00", b"\x00alice@example.test\x00\xff"):
            reply = self.send(b"AUTH PLAIN " + base64.b64encode(message) + b"\r\n")
            self.assertEqual(reply, b"-ERR [AUTH] Invalid PLAIN response.\r\n")
        self.assertEqual(self.send(b"AUTH PLAIN =\r\n"), b"-ERR [AUTH] Invalid PLAIN response.\r\n")
        self.assertEqual(self.factory.throttle.failures("192.0.2.7"), 0)

    def test_unknown_commands_and_long_lines(self) -> None:
        self.assertEqual(self.send(b"HELO\r\n"), b"-ERR Unknown command.\r\n")
        self.assertIn(b"Too many", self.send(b"X\r\n" * 20))
        self.assertTrue(self.transport.disconnecting)
        protocol, transport = self.connect()
        self.assertEqual(self.send(b"X" * 9000, protocol, transport), b"-ERR Line too long.\r\n")
        self.assertTrue(transport.disconnecting)

    def test_quit_before_login(self) -> None:
        self.assertEqual(self.send(b"QUIT\r\n"), b"+OK Logging out.\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_listing_failure_is_temporary_and_unlocks(self) -> None:
        os.makedirs(self.mailbox)
        with open(os.path.join(self.mailbox, "new"), "w"):
            pass  # new/ is a file: scandir fails
        self.assertIn(b"-ERR [SYS/TEMP] ", self.login())
        self.assertTrue(self.flushLoggedErrors(OSError))
        os.unlink(os.path.join(self.mailbox, "new"))
        self.assertIn(b"+OK Logged in.", self.login())


class IdleTests(SessionTestCase):
    def test_idle_session_is_closed(self) -> None:
        self.reactor.advance(599)
        self.send(b"NOOP\r\n")
        self.reactor.advance(599)
        self.assertFalse(self.transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(self.transport.value().endswith(b"-ERR Disconnected for inactivity.\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_timers_cancelled_on_disconnect(self) -> None:
        self.login(password="wrong")
        self.protocol.connectionLost(None)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


MESSAGES = [
    b"Subject: one\nFrom: a@example.test\n\nHello\n.\n..two dots\nend\n",
    b"Subject: two\n\n" + b"line\n" * 10,
    b"Subject: three\n",
]


class TransactionTests(SessionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(*MESSAGES)
        self.assertIn(b"+OK Logged in.", self.login())

    def test_stat_list_uidl(self) -> None:
        sizes = [len(m) + m.count(b"\n") for m in MESSAGES]
        self.assertEqual(self.send(b"STAT\r\n"), b"+OK 3 %d\r\n" % sum(sizes))
        listing = self.send(b"LIST\r\n")
        self.assertEqual(listing, b"+OK 3 messages:\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % tuple(sizes))
        self.assertEqual(self.send(b"LIST 2\r\n"), b"+OK 2 %d\r\n" % sizes[1])
        self.assertEqual(self.send(b"UIDL 1\r\n"), b"+OK 1 1700000000.M0P1Q0.test\r\n")
        uidl = self.send(b"UIDL\r\n").split(b"\r\n")
        expected = [b"%d 170000000%d.M%dP1Q%d.test" % (n + 1, n, n, n) for n in range(3)]
        self.assertEqual(uidl[1:4], expected)
        self.assertEqual(self.send(b"LIST 4\r\n"), b"-ERR There's no message 4.\r\n")
        self.assertEqual(self.send(b"LIST x\r\n"), b"-ERR Invalid message number.\r\n")

    def test_retr_sends_crlf_dot_stuffed_and_list_size_octets(self) -> None:
        reply = self.send(b"RETR 1\r\n")
        self.assertIn(b"\r\n..\r\n...two dots\r\n", reply)
        for number, data in enumerate(MESSAGES, 1):
            listed = int(self.send(b"LIST %d\r\n" % number).split()[2])
            body = self.retr(number)
            self.assertEqual(body, data.replace(b"\n", b"\r\n"))
            self.assertEqual(len(body), listed)

    def test_top(self) -> None:
        self.assertEqual(self.send(b"TOP 2 0\r\n"), b"+OK\r\nSubject: two\r\n\r\n.\r\n")
        self.assertEqual(self.send(b"TOP 2 2\r\n"), b"+OK\r\nSubject: two\r\n\r\nline\r\nline\r\n.\r\n")
        self.assertEqual(self.send(b"TOP 1 2\r\n").split(b"\r\n")[-4:], [b"Hello", b"..", b".", b""])
        self.assertEqual(self.send(b"TOP 3 5\r\n"), b"+OK\r\nSubject: three\r\n.\r\n")
        self.assertIn(b"-ERR Invalid arguments", self.send(b"TOP 1\r\n"))

    def test_dele_quit_deletes(self) -> None:
        self.assertEqual(self.send(b"DELE 1\r\n"), b"+OK Marked to be deleted.\r\n")
        self.assertEqual(self.send(b"DELE 1\r\n"), b"-ERR Message is deleted.\r\n")
        self.assertEqual(self.send(b"RETR 1\r\n"), b"-ERR Message is deleted.\r\n")
        self.assertEqual(self.send(b"STAT\r\n"), b"+OK 2 %d\r\n" % sum(len(m) + m.count(b"\n") for m in MESSAGES[1:]))
        self.assertNotIn(b"\r\n1 ", self.send(b"LIST\r\n"))
        self.assertEqual(self.send(b"QUIT\r\n"), b"+OK Logging out.\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(os.listdir(os.path.join(self.mailbox, "new"))), 2)

    def test_dele_then_dropped_connection_keeps(self) -> None:
        self.send(b"DELE 1\r\nDELE 2\r\n")
        self.protocol.connectionLost(None)
        self.assertEqual(len(os.listdir(os.path.join(self.mailbox, "new"))), 3)

    def test_rset_undeletes(self) -> None:
        self.send(b"DELE 1\r\nDELE 3\r\n")
        self.assertEqual(self.send(b"RSET\r\n"), b"+OK 3 messages.\r\n")
        self.assertTrue(self.send(b"QUIT\r\n").startswith(b"+OK"))
        self.assertEqual(len(os.listdir(os.path.join(self.mailbox, "new"))), 3)

    def test_retrieved_move_to_cur_and_keep_uid(self) -> None:
        before = self.send(b"UIDL\r\n")
        self.retr(2)
        self.send(b"TOP 3 0\r\n")  # TOP is not a retrieval
        self.send(b"QUIT\r\n")
        self.assertEqual(os.listdir(os.path.join(self.mailbox, "cur")), [message_name(1, MESSAGES[1]) + ":2,S"])
        self.assertEqual(len(os.listdir(os.path.join(self.mailbox, "new"))), 2)
        self.protocol, self.transport = self.connect()
        self.login()
        self.assertEqual(self.send(b"UIDL\r\n"), before)

    def test_pipelined_retrievals_stay_in_order(self) -> None:
        reply = self.send(b"RETR 3\r\nRETR 3\r\nNOOP\r\nQUIT\r\n")
        one = b"+OK 16 octets\r\nSubject: three\r\n.\r\n"
        self.assertEqual(reply, one + one + b"+OK\r\n+OK Logging out.\r\n")
        self.assertEqual(len(os.listdir(os.path.join(self.mailbox, "cur"))), 1)

    def test_noop(self) -> None:
        self.assertEqual(self.send(b"NOOP\r\n"), b"+OK\r\n")

    def test_vanished_message_is_temporary_error(self) -> None:
        for name in os.listdir(os.path.join(self.mailbox, "new")):
            os.unlink(os.path.join(self.mailbox, "new", name))
        self.assertEqual(self.send(b"RETR 1\r\n"), b"-ERR [SYS/TEMP] Message is not available.\r\n")
        self.assertEqual(self.send(b"NOOP\r\n"), b"+OK\r\n")

    def test_failed_delete_is_reported_at_quit(self) -> None:
        def refuse(path: str) -> None:
            raise PermissionError(path)

        self.patch(mailbox.os, "unlink", refuse)
        self.send(b"DELE 1\r\n")
        self.assertEqual(self.send(b"QUIT\r\n"), b"-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.mailboxes.locks, set())

    def big_message(self) -> bytes:
        """A fourth message, larger than one block: streamed by a producer."""
        self.deliver(*MESSAGES, b"Subject: big\n\n" + (b"x" * 99 + b"\n") * 2000)
        self.send(b"QUIT\r\n")
        self.protocol.connectionLost(None)
        self.protocol, self.transport = self.connect()
        self.assertIn(b"+OK Logged in.", self.login())
        return b"RETR 4\r\n"

    def test_a_small_message_is_sent_whole_at_once(self) -> None:
        self.transport.clear()
        self.protocol.dataReceived(b"RETR 2\r\n")
        self.assertIsNone(self.transport.producer)  # no producer was needed
        self.assertEqual(self.transport.value(), b"+OK %d octets\r\n" % (len(MESSAGES[1]) + MESSAGES[1].count(b"\n"))
                         + MESSAGES[1].replace(b"\n", b"\r\n") + b".\r\n")

    def test_connection_lost_mid_message(self) -> None:
        retr = self.big_message()
        self.transport.clear()
        self.protocol.dataReceived(retr)
        sender = self.transport.producer
        self.assertIsNotNone(sender)
        self.protocol.connectionLost(None)
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.factory.mailboxes.locks, set())
        self.send(b"QUIT\r\n")  # nothing happens on a dead session
        self.assertEqual(len(os.listdir(os.path.join(self.mailbox, "new"))), 4)

    def test_server_stop_ends_an_idle_session_and_deletes_nothing(self) -> None:
        self.send(b"DELE 1\r\n")
        self.transport.clear()
        stopped = self.factory.shut_down()
        self.assertEqual(self.transport.value(), b"-ERR [SYS/TEMP] Server shutting down.\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(stopped)
        self.protocol.connectionLost(None)
        self.successResultOf(stopped)
        self.assertEqual(len(os.listdir(os.path.join(self.mailbox, "new"))), 3)

    def test_server_stop_lets_a_message_in_flight_finish(self) -> None:
        retr = self.big_message()
        self.transport.clear()
        self.protocol.dataReceived(retr)
        stopped = self.factory.shut_down()
        self.assertFalse(self.transport.disconnecting)
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        self.assertTrue(self.transport.value().endswith(b"\r\n.\r\n-ERR [SYS/TEMP] Server shutting down.\r\n"))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(None)
        self.successResultOf(stopped)

    def test_idle_timeout_mid_message_closes(self) -> None:
        retr = self.big_message()
        self.protocol.dataReceived(retr)
        self.assertIsNotNone(self.transport.producer)
        self.reactor.advance(600)
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.disconnecting)


class LeadMaildirTests(SessionTestCase):
    """Files written by mailgate.store.maildir_writer: W= must agree with what RETR sends."""

    def test_delivered_message_sizes(self) -> None:
        header = b"Return-Path: <a@example.test>\nReceived: from x by mail.example.test\n"
        body = [b"Subject: hi\n\n.leading dot\n", b"x" * 70_000 + b"\n", b"last\n"]
        message = StoredMessage.build(header, body, sum(map(len, body)), sum(c.count(b"\n") for c in body))
        deliver_durably([self.mailbox], message, "mail.example.test")
        self.login()
        listed = int(self.send(b"LIST 1\r\n").split()[2])
        self.assertEqual(len(self.retr(1)), listed)


class StreamingTests(SynchronousTestCase):
    """Block-wise conversion must match a line-by-line reference at every block size."""

    SAMPLES = [
        b"",
        b"no newline at end",
        b".starts with dot\n.\n..\nmid.dle\n\n.",
        b"H: v\r\nH2: v\r\n\r\nbody.\r\n.dot\r\nx\n",
        b"\n\n\n.\n",
        b"H: v\n\nline1\nline2\nline3\n",
        b"H: v\nno body separator\n",
    ]

    def reference(self, data: bytes, top: int | None) -> bytes:
        text = data.replace(b"\r\n", b"\n")
        lines = text.split(b"\n") if text else []
        ended = text.endswith(b"\n")
        if ended:
            lines.pop()
        if top is not None:
            out, in_headers, left = [], True, top
            for line in lines:
                if in_headers:
                    out.append(line)
                    in_headers = line != b""
                    continue
                if left == 0:
                    break
                out.append(line)
                left -= 1
            lines = out
        stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
        return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"

    def stream(self, data: bytes, top: int | None, block: int) -> bytes:
        import io

        self.patch(pop3_stream, "BLOCK_SIZE", block)
        consumer = StringTransport()
        progress: list[None] = []
        done = MessageSender(io.BytesIO(data), top, lambda: progress.append(None)).begin(consumer, b"+OK\r\n")
        while consumer.producer is not None:
            consumer.producer.resumeProducing()
        self.successResultOf(done)
        status, _, rest = consumer.value().partition(b"\r\n")
        self.assertEqual(status, b"+OK")  # once, first
        return rest

    def test_matches_reference(self) -> None:
        for sample in self.SAMPLES:
            for top in (None, 0, 1, 2, 100):
                for block in (1, 2, 3, 5, 64):
                    self.assertEqual(self.stream(sample, top, block), self.reference(sample, top), (sample, top, block))

    def test_dot_stuffer_and_limiter_units(self) -> None:
        stuffer = DotStuffer()
        self.assertEqual(stuffer.feed(b".a\r\n") + stuffer.feed(b".b") + stuffer.finish(), b"..a\r\n..b\r\n.\r\n")
        limiter = TopLimiter(1)
        self.assertEqual(limiter.feed(b"H: v\r\n\r"), (b"H: v\r\n\r", False))
        self.assertEqual(limiter.feed(b"\nb1\r\nb2\r\n"), (b"\nb1\r\n", True))
