"""Tests for mailgate.smtp.session: the SMTP session driven over StringTransport, time on a Clock."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailgate.accounts import users_file as users
from mailgate.inbound.transaction import Deliverer
from mailgate.core.errors import TemporaryFailure
from mailgate.store.maildir_writer import MaildirStore, StoredMessage
from tests.support.smtp_session import (
    ALICE, BOB, HOSTNAME, TIMEOUT, Client, Routes, Server, TLSStringTransport, codes, replies, transaction,
)

# --- greeting and EHLO -------------------------------------------------------


def test_greeting(server: Server) -> None:
    c = server.connect()
    assert replies(c.greeting) == [f"220 {HOSTNAME} ESMTP mailgate"]
    assert not c.transport.disconnecting


def test_ehlo_lists_extensions(server: Server) -> None:
    [reply] = server.connect().send(b"EHLO client.test\r\n")
    lines = [line[4:] for line in reply.split("\n")]
    assert reply.startswith("250-")
    assert lines[0] == HOSTNAME
    assert {"PIPELINING", f"SIZE {server.config.limits.max_message_size}", "8BITMIME",
            "ENHANCEDSTATUSCODES"} <= set(lines)
    assert "STARTTLS" not in lines  # no TLS options given


def test_ehlo_offers_starttls_with_tls_options(make_server: Callable[..., Server]) -> None:
    server = make_server(tls_options=object())
    [reply] = server.connect().send(b"EHLO client.test\r\n")
    assert "STARTTLS" in [line[4:] for line in reply.split("\n")]


def test_no_starttls_when_listener_is_not_starttls(make_server: Callable[..., Server]) -> None:
    listen = [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525", "tls": "none"}]
    server = make_server(tls_options=object(), listen=listen)
    c = server.connect()
    assert "STARTTLS" not in c.send(b"EHLO client.test\r\n")[0]
    assert c.send_codes(b"STARTTLS\r\n") == [502]


def test_starttls_discards_pipelined_commands_and_resets(make_server: Callable[..., Server]) -> None:
    """RFC 3207 4.2: nothing sent before the handshake may count after it."""
    options = object()
    server = make_server(tls_options=options)
    transport = TLSStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
    c = server.connect(transport=transport)
    c.send(b"EHLO client.test\r\n")
    assert c.send(b"STARTTLS\r\nMAIL FROM:<a@remote.test>\r\n") == ["220 2.0.0 Ready to start TLS"]
    assert transport.tls_options is options
    assert c.send_codes(b"MAIL FROM:<a@remote.test>\r\n") == [503]  # EHLO again first
    [ehlo] = c.send(b"EHLO client.test\r\n")
    assert "STARTTLS" not in ehlo


def test_helo_without_argument(server: Server) -> None:
    c = server.connect()
    assert c.send_codes(b"HELO\r\nEHLO\r\n") == [501, 501]
    assert c.send(b"HELO client.test\r\n") == [f"250 {HOSTNAME}"]


def test_helo_with_control_characters_is_refused(server: Server) -> None:
    c = server.connect()
    assert c.send_codes(b"EHLO a\rInjected: yes\r\n") == [501]


# --- command sequence --------------------------------------------------------


def test_mail_before_helo(server: Server) -> None:
    assert server.connect().send(b"MAIL FROM:<a@remote.test>\r\n") == ["503 5.5.1 Send HELO/EHLO first"]


def test_rcpt_before_mail(client: Client) -> None:
    assert client.send(b"RCPT TO:<alice@example.test>\r\n") == ["503 5.5.1 Need MAIL command"]
    assert not client.transport.disconnecting


def test_data_before_mail(client: Client) -> None:
    assert client.send_codes(b"DATA\r\n") == [503]


def test_data_without_recipients(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n") == [
        250, 550, 554,
    ]
    assert client.send_codes(b"NOOP\r\n") == [250]  # DATA was refused: still in command mode


def test_nested_mail(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\nMAIL FROM:<b@remote.test>\r\n") == [250, 503]


def test_unknown_command(client: Client) -> None:
    assert client.send_codes(b"FROB\r\nNOOP\r\n") == [500, 250]


def test_rset_clears_the_transaction(server: Server, client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRSET\r\nDATA\r\n") == [
        250, 250, 250, 503,
    ]
    assert client.send_codes(transaction([BOB])) == [250, 250, 354, 250]
    [(envelope, _)] = server.deliverer.calls
    assert envelope.rcpt_to == [BOB]


def test_ehlo_again_clears_the_transaction(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\nEHLO again.test\r\nRCPT TO:<alice@example.test>\r\n") == [
        250, 250, 503,
    ]


def test_quit(client: Client) -> None:
    assert client.send(b"QUIT\r\nNOOP\r\n") == ["221 2.0.0 Bye"]
    assert client.transport.disconnecting


# --- MAIL parameters ---------------------------------------------------------


def test_null_sender_accepted(server: Server, client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nx\r\n.\r\n") == [
        250, 250, 354, 250,
    ]
    [(envelope, stored)] = server.deliverer.calls
    assert envelope.mail_from == ""
    assert stored.startswith(b"Return-Path: <>\n")


def test_size_over_limit(make_server: Callable[..., Server]) -> None:
    c = make_server(limits={"max_message_size": 1000}).connect()
    c.send(b"EHLO client.test\r\n")
    assert c.send(b"MAIL FROM:<a@remote.test> SIZE=1001\r\n") == ["552 5.3.4 Message size exceeds fixed limit"]
    assert c.send_codes(b"MAIL FROM:<a@remote.test> SIZE=1000 BODY=8BITMIME\r\n") == [250]


def test_unknown_mail_parameter(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test> FROB=1\r\n") == [555]
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\n") == [250]  # no transaction was started


def test_bad_sender_syntax(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:a@remote.test\r\nMAIL FROM:<a/b@remote.test>\r\n") == [501, 501]


def test_rcpt_parameter_refused(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test> XFOO=1\r\n") == [
        250, 555,
    ]


# --- recipients --------------------------------------------------------------


def test_unknown_local_user(client: Client) -> None:
    assert client.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<nobody@example.test>\r\n")[1].startswith("550 5.1.1 ")


def test_local_users_case_insensitive(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<Alice@Example.TEST>\r\n") == [250, 250]


def test_remote_recipient_is_not_relayed_for_strangers(client: Client) -> None:
    [_, reply] = client.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<carol@remote.test>\r\n")
    assert reply.startswith("554 5.7.1 ")


def test_remote_recipient_from_allowed_network_is_relayed_by_mx(make_server: Callable[..., Server]) -> None:
    server = make_server(relay={"allowed_networks": ["127.0.0.0/8"]})
    c = server.connect()
    c.send(b"EHLO client.test\r\n")
    c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<carol@remote.test>\r\nDATA\r\n")
    assert c.send(b"Subject: out\r\n\r\nhi\r\n.\r\n")[0].startswith("250 ")
    [(envelope, _)] = server.deliverer.calls
    assert envelope.routes == {"carol@remote.test": "mx"}
    other = server.connect(ip="192.0.2.7")  # outside the allowed network
    other.send(b"EHLO client.test\r\n")
    assert other.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<carol@remote.test>\r\n")[1].startswith("554 5.7.1 ")


def test_max_recipients(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"max_recipients": 2})
    c = server.connect()
    c.send(b"EHLO client.test\r\n")
    sent = c.send(
        b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
        b"RCPT TO:<postmaster@example.test>\r\nDATA\r\nx\r\n.\r\n"
    )
    assert [r[:3] for r in sent] == ["250", "250", "250", "452", "354", "250"]
    assert sent[3].startswith("452 4.5.3 ")
    [(envelope, _)] = server.deliverer.calls
    assert envelope.rcpt_to == [ALICE, BOB]


def test_bare_postmaster(server: Server, client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<Postmaster>\r\nDATA\r\nx\r\n.\r\n") == [
        250, 250, 354, 250,
    ]
    [(envelope, _)] = server.deliverer.calls
    assert envelope.rcpt_to == ["postmaster@example.test"]


def test_duplicate_recipient_is_delivered_once(server: Server, client: Client) -> None:
    assert client.send_codes(transaction([ALICE, ALICE])) == [250, 250, 250, 354, 250]
    [(envelope, _)] = server.deliverer.calls
    assert envelope.rcpt_to == [ALICE]


def test_reject_route_from_plugin(make_server: Callable[..., Server]) -> None:
    plugin = Routes({"blocked@example.test": "reject:550 5.7.1 not here", "later@example.test": "reject:450 4.7.1 later"})
    c = make_server(extra_plugins=(plugin,)).connect()
    c.send(b"EHLO client.test\r\n")
    assert c.send(
        b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<blocked@example.test>\r\nRCPT TO:<later@example.test>\r\n"
    )[1:] == ["550 5.7.1 not here", "450 4.7.1 later"]


def test_plugin_route_coroutine_is_awaited(make_server: Callable[..., Server]) -> None:
    async def sink() -> str:
        return "discard"

    async def undecided() -> None:
        return None

    server = make_server(extra_plugins=(Routes({"sink@example.test": sink, ALICE: undecided}),))
    c = server.connect()
    c.send(b"EHLO client.test\r\n")
    assert c.send_codes(transaction(["sink@example.test", ALICE])) == [250, 250, 250, 354, 250]
    [(envelope, _)] = server.deliverer.calls
    assert envelope.routes == {"sink@example.test": "discard", ALICE: "local"}


def test_slow_plugin_route_holds_back_pipelined_replies(make_server: Callable[..., Server]) -> None:
    """PIPELINING: replies stay in order while a route is being decided."""
    pending: Deferred[str] = Deferred()
    c = make_server(extra_plugins=(Routes({"slow@example.test": lambda: pending}),)).connect()
    c.send(b"EHLO client.test\r\n")
    assert c.send_codes(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<slow@example.test>\r\nNOOP\r\n") == [250]
    assert c.send_codes(b"RSET\r\n") == []
    c.transport.clear()
    pending.callback("discard")
    assert codes(c.transport.value()) == [250, 250, 250]


def test_crashing_plugin_gives_temporary_failure(make_server: Callable[..., Server]) -> None:
    def crash() -> None:
        raise RuntimeError("plugin bug")

    c = make_server(extra_plugins=(Routes({"crash@example.test": crash}),)).connect()
    c.send(b"EHLO client.test\r\n")
    assert c.send_codes(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<crash@example.test>\r\nNOOP\r\n") == [250, 451, 250]


# --- DATA --------------------------------------------------------------------


def test_whole_pipelined_transaction_in_one_piece(server: Server) -> None:
    c = server.connect()
    sent = c.send(
        b"EHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
        b"RCPT TO:<bob@example.test>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n"
    )
    assert [r[:3] for r in sent] == ["250", "250", "250", "250", "354", "250", "221"]
    assert sent[5].startswith("250 2.0.0 Ok: queued as ")
    [(envelope, stored)] = server.deliverer.calls
    assert envelope.mail_from == "sender@remote.test"
    assert envelope.rcpt_to == [ALICE, BOB]
    assert envelope.routes == {ALICE: "local", BOB: "local"}
    assert envelope.helo == "client.test" and envelope.client_ip == "127.0.0.1"
    assert stored.startswith(b"Return-Path: <sender@remote.test>\nReceived: from client.test ([127.0.0.1])\n")
    assert f"by {HOSTNAME} (mailgate) with ESMTP id ".encode() in stored
    assert stored.endswith(b"\nSubject: hi\n\n.dot\nbody\n")
    assert c.transport.disconnecting


def test_transaction_byte_by_byte(server: Server) -> None:
    c = server.connect()
    data = b"EHLO client.test\r\n" + transaction([ALICE], b"a\r\n.b\r\n") + b"NOOP\r\n"
    c.transport.clear()
    for byte in data:
        c.protocol.dataReceived(bytes([byte]))
    assert codes(c.transport.value()) == [250, 250, 250, 354, 250, 250]
    [(_, stored)] = server.deliverer.calls
    assert stored.endswith(b"\na\nb\n")


def test_two_transactions_in_one_session(server: Server, client: Client) -> None:
    assert client.send_codes(transaction([ALICE]) + transaction([BOB])) == [250, 250, 354, 250] * 2
    assert [env.rcpt_to for env, _ in server.deliverer.calls] == [[ALICE], [BOB]]


def test_stored_trace_header_names_one_recipient(server: Server, client: Client) -> None:
    client.send(transaction([ALICE]))
    [(_, stored)] = server.deliverer.calls
    assert b"\n\tfor <alice@example.test>;" in stored


def test_bare_lf_message_refused_when_configured(make_server: Callable[..., Server]) -> None:
    server = make_server(security={"bare_newline": "reject"})
    client = server.connect()
    client.send(b"EHLO client.test\r\n")
    sent = client.send(transaction([ALICE], b"Subject: x\r\n\r\nbare\nline\r\n"))
    assert [r[:3] for r in sent] == ["250", "250", "354", "550"]
    assert sent[3].startswith("550 5.5.2 ")
    assert server.deliverer.calls == []
    assert client.send_codes(b"NOOP\r\n") == [250]


def test_bare_lf_normalized_by_default(server: Server, client: Client) -> None:
    assert client.send_codes(transaction([ALICE], b"a\nb\r\nc\r\n")) == [250, 250, 354, 250]
    [(_, stored)] = server.deliverer.calls
    assert stored.endswith(b"\na\nb\nc\n")


@pytest.mark.parametrize("body", [b"a\rb\r\n", b"a\x00b\r\n"])
def test_bare_cr_and_nul_refused_by_default(server: Server, client: Client, body: bytes) -> None:
    sent = client.send(transaction([ALICE], body))
    assert sent[3].startswith("550 5.5.2 "), sent
    assert server.deliverer.calls == []


def test_smuggled_second_message_is_not_delivered(server: Server, client: Client) -> None:
    """SMTP smuggling: `\\n.\\r\\n` does not end DATA, so the "second message" is text of the first."""
    sent = client.send(
        b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: first\r\n\r\nhello\n.\r\n"
        b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nevil\r\n.\r\n"
    )
    assert [r[:3] for r in sent] == ["250", "250", "354", "250"]  # one message: bare LF is a line end
    [(envelope, stored)] = server.deliverer.calls
    assert envelope.mail_from == "sender@remote.test" and envelope.rcpt_to == ["bob@example.test"]
    assert stored.endswith(b"\nhello\n\nMAIL FROM:<evil@x.test>\nRCPT TO:<alice@example.test>\nDATA\nevil\n")


def test_oversize_message_refused(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"max_message_size": 1000})
    c = server.connect()
    c.send(b"EHLO client.test\r\n")
    sent = c.send(transaction([ALICE], b"x" * 500 + b"\r\n" + b"y" * 500 + b"\r\n") + b"NOOP\r\n")
    assert [r[:3] for r in sent] == ["250", "250", "354", "552", "250"]
    assert sent[3].startswith("552 5.3.4 ")
    assert server.deliverer.calls == []


def test_text_line_too_long_refused(server: Server, client: Client) -> None:
    sent = client.send(transaction([ALICE], b"y" * 999 + b"\r\n") + b"NOOP\r\n")
    assert sent[3].startswith("500 5.5.2 ")
    assert sent[4].startswith("250 ")
    assert server.deliverer.calls == []


def test_temporary_failure_gives_451_and_session_goes_on(server: Server, client: Client) -> None:
    server.deliverer.error = TemporaryFailure(reason="disk on fire")
    sent = client.send(transaction([ALICE]))
    assert sent[3].startswith("451 4.3.0 ")
    assert "disk on fire" not in sent[3]  # the reason is for the log only
    server.deliverer.error = None
    assert client.send_codes(transaction([ALICE])) == [250, 250, 354, 250]
    assert len(server.deliverer.calls) == 1


def test_unexpected_delivery_crash_is_temporary(server: Server, client: Client) -> None:
    server.deliverer.error = RuntimeError("bug")
    assert client.send_codes(transaction([ALICE]) + b"NOOP\r\n") == [250, 250, 354, 451, 250]


def test_pipelined_commands_wait_for_delivery(server: Server, client: Client) -> None:
    server.deliverer.gate = Deferred()
    assert client.send_codes(transaction([ALICE]) + b"NOOP\r\n") == [250, 250, 354]
    assert client.send_codes(b"NOOP\r\n") == []
    client.transport.clear()
    server.deliverer.gate.callback(None)
    assert codes(client.transport.value()) == [250, 250, 250]


# --- line limits -------------------------------------------------------------


def test_command_line_too_long_then_session_goes_on(client: Client) -> None:
    assert client.send(b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]
    assert not client.transport.disconnecting


def test_command_line_too_long_in_pieces(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<" + b"x" * 1000) == []
    assert client.send_codes(b"x" * 1000) == []
    assert client.send_codes(b"@remote.test>\r\nNOOP\r\n") == [500, 250]
    assert client.send_codes(b"RCPT TO:<alice@example.test>\r\n") == [503]  # the long MAIL did not count


def test_command_line_of_511_octets_is_fine(client: Client) -> None:
    assert client.send_codes(b"NOOP " + b"x" * 504 + b"\r\n") == [250]


def test_command_line_of_512_octets_is_fine(client: Client) -> None:
    assert client.send_codes(b"NOOP " + b"x" * 505 + b"\r\n") == [250]


def test_non_ascii_command(client: Client) -> None:
    assert client.send_codes("NOOP é\r\nNOOP\r\n".encode()) == [500, 250]


def test_many_pipelined_commands(client: Client) -> None:
    sent = client.send_codes(b"MAIL FROM:<a@remote.test>\r\n" + b"RCPT TO:<nobody@example.test>\r\n" * 500
                             + b"NOOP\r\n")
    assert sent == [250] + [550] * 500 + [250]


# --- connections, timeouts and shutdown ---------------------------------------


def test_idle_timeout(server: Server, client: Client) -> None:
    server.clock.advance(TIMEOUT - 1)
    assert not client.transport.disconnecting
    client.send(b"NOOP\r\n")  # activity restarts the timer
    server.clock.advance(TIMEOUT - 1)
    assert not client.transport.disconnecting
    client.transport.clear()
    server.clock.advance(2)
    assert codes(client.transport.value()) == [421]
    assert client.transport.disconnecting
    assert client.send(b"NOOP\r\n") == []  # nothing more is answered


def test_idle_timer_does_not_run_while_the_server_delivers(server: Server, client: Client) -> None:
    server.deliverer.gate = Deferred()
    client.send(transaction([ALICE]))
    client.transport.clear()
    server.clock.advance(TIMEOUT + 1)
    server.deliverer.gate.callback(None)
    assert codes(client.transport.value()) == [250]
    assert not client.transport.disconnecting


def test_configured_command_timeout(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"command_timeout": "30s"})
    c = server.connect()
    server.clock.advance(29)
    assert not c.transport.disconnecting
    server.clock.advance(2)
    assert replies(c.transport.value())[0].startswith("421 4.4.2 ")
    assert c.transport.disconnecting


def test_timer_stops_when_connection_is_lost(server: Server, client: Client) -> None:
    client.lose()
    assert server.clock.getDelayedCalls() == []
    assert server.factory.sessions == set()


def test_too_many_connections_from_one_address(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"max_connections_per_ip": 2})
    first, second = server.connect(), server.connect()
    third = server.connect()
    assert codes(first.greeting) == codes(second.greeting) == [220]
    assert replies(third.greeting) == ["421 4.7.0 Too many connections from your address"]
    assert third.transport.disconnecting
    assert codes(server.connect(ip="192.0.2.1").greeting) == [220]  # another address is fine
    third.lose()
    first.lose()
    assert codes(server.connect().greeting) == [220]


def test_shut_down_says_421_to_idle_sessions(server: Server) -> None:
    first, second = server.connect(), server.connect()
    first.send(b"EHLO client.test\r\n")
    first.transport.clear()
    done = server.factory.shut_down()
    for c in (first, second):
        assert replies(c.transport.value()) == ["421 4.3.2 Service shutting down"]
        assert c.transport.disconnecting
    case = SynchronousTestCase()
    case.assertNoResult(done)
    first.lose()
    case.assertNoResult(done)
    second.lose()
    case.successResultOf(done)
    assert codes(server.connect().greeting) == [421]  # no new sessions while stopping


def test_shut_down_waits_for_delivery_in_flight(server: Server, client: Client) -> None:
    server.deliverer.gate = Deferred()
    client.send(transaction([ALICE]))
    client.transport.clear()
    done = server.factory.shut_down()
    assert client.transport.value() == b""
    assert not client.transport.disconnecting
    server.deliverer.gate.callback(None)
    assert codes(client.transport.value()) == [250, 421]  # the message was accepted, then goodbye
    assert client.transport.disconnecting
    assert len(server.deliverer.calls) == 1
    client.lose()
    SynchronousTestCase().successResultOf(done)


# --- with the real Deliverer and Maildir store ---------------------------------


class MaildirRoundTripTests(TestCase):
    """The session, a real Deliverer and MaildirStore writing in a thread pool."""

    def setUp(self) -> None:
        self.patch(users, "BCRYPT_ROUNDS", 4)
        root = Path(tempfile.mkdtemp())  # not trial's mktemp: that writes below the cwd
        self.addCleanup(shutil.rmtree, root)
        self.server = Server(root, store={"maildir_root": str(root / "mail")})
        self.pool = ThreadPool(minthreads=1, maxthreads=2, name="smtp-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        store = MaildirStore(str(root / "mail"), HOSTNAME, lambda f, *a: deferToThreadPool(reactor, self.pool, f, *a))
        self.stored: list[Deferred] = []  # the session awaits these; they fire after its reply
        self.placed: list[str] = []
        real_deliver = store.deliver_all

        def deliver_all(copies: list[tuple[list[str], StoredMessage]]) -> Deferred:
            d = real_deliver(copies)
            self.stored.append(d)
            return d.addCallback(self.placed.extend).addCallback(lambda _: self.placed)

        store.deliver_all = deliver_all  # type: ignore[method-assign]
        manager_hooks = self.server.factory.policy.hooks
        self.server.factory.policy.deliverer = Deliverer(store, None, manager_hooks)
        self.root = root

    def test_message_reaches_both_maildirs(self) -> Deferred:
        c = self.server.connect()
        c.send(b"EHLO client.test\r\n" + transaction([ALICE, BOB], b"Subject: hi\r\n\r\nhello\r\n") + b"QUIT\r\n")
        self.assertEqual(codes(c.transport.value()), [250, 250, 250, 250, 354])  # 250 waits for the disk
        self.assertEqual(len(self.stored), 1)

        def check(_: object) -> None:
            self.assertEqual(codes(c.transport.value()), [250, 250, 250, 250, 354, 250, 221])
            self.assertEqual(len(self.placed), 2)
            for address in (ALICE, BOB):
                new = self.root / "mail" / "example.test" / address.split("@")[0] / "new"
                [path] = list(new.iterdir())
                data = path.read_bytes()
                self.assertTrue(data.startswith(b"Return-Path: <sender@remote.test>\nReceived: from client.test"))
                self.assertTrue(data.endswith(b"\nSubject: hi\n\nhello\n"))
                self.assertIn(f",S={len(data)},".encode(), path.name.encode())

        return self.stored[0].addCallback(check)

    def test_unwritable_maildir_gives_451(self) -> Deferred:
        box = self.root / "mail" / "example.test" / "alice"
        for sub in ("tmp", "cur"):
            (box / sub).mkdir(parents=True)
        (box / "new").write_bytes(b"")
        c = self.server.connect()
        c.send(b"EHLO client.test\r\n" + transaction([ALICE]) + b"NOOP\r\n")

        def check(_: object) -> None:
            sent = replies(c.transport.value())
            self.assertEqual([r[:3] for r in sent], ["250", "250", "250", "354", "451", "250"])
            self.assertNotIn(str(box), sent[4])  # no paths leak to the client
            self.assertEqual(list((box / "tmp").iterdir()), [])

        return self.stored[0].addBoth(lambda _: None).addCallback(check)


def test_transaction_ids_name_the_process_that_made_them() -> None:
    """The pid is cached, so it must be refreshed in a forked child (twistd daemonizes after import)."""
    import os

    from mailgate.core.queue_ids import transaction_id

    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(writer, f"{os.getpid():X} {transaction_id()}".encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    pid, made = os.read(reader, 200).decode().split()
    os.close(reader)
    assert pid in made  # the child's own pid, not the cached one of its parent


def test_received_date_is_this_second() -> None:
    import time
    from email.utils import parsedate_to_datetime

    from mailgate.core.trace import trace_header

    before = int(time.time())
    header = trace_header(mail_from="a@b.test", hostname="mx.test", queue_id="Q", protocol="ESMTP", recipients=[])
    after = time.time()
    stamp = header.decode().rsplit("\n\t", 1)[1].strip()
    assert before <= parsedate_to_datetime(stamp).timestamp() <= after
