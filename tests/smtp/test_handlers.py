"""Command handlers called directly, without a session: a SessionState, a recording Channel, a policy."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mailgate.core.reply import Reply
from mailgate.core.session import Session
from mailgate.smtp import mail_command, rcpt_command, session_commands
from mailgate.smtp.data_reader import DataReader
from mailgate.smtp.state import SessionState
from tests.support.smtp_session import ALICE, Server


class RecordingChannel:
    """A Channel that only writes down what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def send(self, reply: Reply) -> None:
        self.calls.append(("send", reply))

    def read_line(self) -> Deferred[str]:
        self.calls.append(("read_line", None))
        return Deferred()

    def close(self, reply: Reply) -> None:
        self.calls.append(("close", reply))

    def start_tls(self, ready: Reply) -> None:
        self.calls.append(("start_tls", ready))

    def receive_data(self, reader: DataReader) -> None:
        self.calls.append(("receive_data", reader))

    def server_name(self) -> str:
        return "mx.example.test"


def test_an_envelope_keeps_the_session_it_was_opened_in(server: Server) -> None:
    policy, channel = server.factory.policy, RecordingChannel()
    state = SessionState(Session(peer="192.0.2.1", listener="mx"))
    assert session_commands.ehlo("client.test", state, channel, policy).code == 250
    answer = mail_command.mail("FROM:<a@remote.test>", state, channel, policy)  # the plugins' verdict: awaited
    assert SynchronousTestCase().successResultOf(Deferred.fromCoroutine(answer)) == mail_command.OK
    assert state.envelope is not None
    opened_in = state.envelope.session
    assert opened_in == Session(peer="192.0.2.1", helo="client.test", listener="mx")
    assert session_commands.starttls("", state, channel, policy) == session_commands.NO_STARTTLS  # no TLS options
    state.start_tls()
    assert state.envelope is None and state.session.tls and not state.session.helo
    assert opened_in.helo == "client.test" and not opened_in.tls  # replaced, not changed
    assert channel.calls == []


def test_refusals_need_no_coroutine(server: Server) -> None:
    policy, channel = server.factory.policy, RecordingChannel()
    state = SessionState(Session(peer="192.0.2.1"))
    assert rcpt_command.rcpt(f"TO:<{ALICE}>", state, channel, policy) == rcpt_command.NEED_MAIL
    assert mail_command.mail("FROM:<a@remote.test>", state, channel, policy) == mail_command.NEED_HELO
    state.greet("client.test", esmtp=False)
    Deferred.fromCoroutine(mail_command.mail("FROM:<a@remote.test>", state, channel, policy))
    assert rcpt_command.rcpt("TO:<a@b.test> X=1", state, channel, policy) == Reply(555, "5.5.4",
                                                                                   "Unsupported parameter X")


def test_rcpt_routes_in_a_coroutine(server: Server) -> None:
    policy, channel = server.factory.policy, RecordingChannel()
    state = SessionState(Session(peer="192.0.2.1", helo="client.test"))
    Deferred.fromCoroutine(mail_command.mail("FROM:<a@remote.test>", state, channel, policy))
    pending = rcpt_command.rcpt(f"TO:<{ALICE}>", state, channel, policy)
    assert not isinstance(pending, Reply)
    answer = SynchronousTestCase().successResultOf(Deferred.fromCoroutine(pending))
    assert answer == Reply(250, "2.1.5", "Ok")
    assert state.envelope is not None and state.envelope.rcpt_to == [ALICE]


def test_quit_closes_through_the_channel(server: Server) -> None:
    channel = RecordingChannel()
    assert session_commands.quit_("", SessionState(Session()), channel, server.factory.policy) is None
    assert channel.calls == [("close", session_commands.BYE)]
