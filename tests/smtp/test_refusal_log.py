"""Every refused SMTP command leaves one log line with the client's IP and the reply sent (fail2ban's food)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.smtp.test_auth import plain
from tests.support.logs import LogLines, pytest_log_lines
from tests.support.smtp_session import Server


class RecordingMeters:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def session_opened(self, protocol: str, listener: str) -> None:
        self.calls.append(("opened", protocol, listener))

    def session_closed(self, protocol: str, listener: str, seconds: float) -> None:
        self.calls.append(("closed", protocol, listener, seconds))

    def auth_failed(self, protocol: str) -> None:
        self.calls.append(("auth_failed", protocol))

    def webhook_answered(self, name: str, status: str) -> None:
        self.calls.append(("webhook", name, status))


@pytest.fixture
def log(request: pytest.FixtureRequest) -> LogLines:
    return pytest_log_lines(request)


def rejects(log: LogLines) -> list[str]:
    return [line for line in log.lines if line.startswith("reject: ")]


def test_a_refused_relay_names_the_client_the_reply_and_the_addresses(server: Server, log: LogLines) -> None:
    c = server.connect(ip="192.0.2.7")
    c.send(b"EHLO pc.example\r\nMAIL FROM:<someone@remote.test>\r\n")
    assert c.send_codes(b"RCPT TO:<victim@elsewhere.test>\r\n") == [554]
    assert rejects(log) == ["reject: RCPT from [192.0.2.7]: 554 5.7.1 Relay access denied; "
                            "from=<someone@remote.test> to=<victim@elsewhere.test> helo=<pc.example> listener=mx"]
    [event] = log.named("smtp.reject")
    assert (event["client"], event["command"], event["reply"], event["to"]) == (
        "192.0.2.7", "RCPT", "554 5.7.1 Relay access denied", "victim@elsewhere.test")


def test_an_unknown_user_and_a_command_out_of_order_each_leave_a_line(server: Server, log: LogLines) -> None:
    c = server.connect(ip="192.0.2.8")
    assert c.send_codes(b"MAIL FROM:<a@remote.test>\r\n") == [503]
    c.send(b"EHLO pc\r\nMAIL FROM:<a@remote.test>\r\n")
    assert c.send_codes(b"RCPT TO:<nobody@example.test>\r\n") == [550]
    lines = rejects(log)
    assert lines[0] == "reject: MAIL from [192.0.2.8]: 503 5.5.1 Send HELO/EHLO first; from=<a@remote.test> " \
                       "helo=<> listener=mx"
    assert lines[1].startswith("reject: RCPT from [192.0.2.8]: 550 5.1.1 Recipient address rejected: User unknown;")
    assert "to=<nobody@example.test>" in lines[1]
    assert [line for line in log.lines if "250" in line and "reject" in line] == []  # accepted commands: no line


def test_what_a_client_sends_cannot_forge_a_log_line(server: Server, log: LogLines) -> None:
    c = server.connect()
    c.send(b"EHLO pc\r\nMAIL FROM:<a@remote.test>\r\n")
    c.send(b"RCPT TO:<x\x1b@elsewhere.test>\r\nBOGUS \x07ring\r\n")
    assert all("\x1b" not in line and "\x07" not in line for line in rejects(log)), rejects(log)
    assert len(rejects(log)) == 2


def test_a_failed_auth_is_one_line_naming_the_account(make_server: Callable[..., Server], log: LogLines) -> None:
    server = make_server(auth=True, security={"plaintext_auth": "always"})
    meters = server.factory.policy.meters = RecordingMeters()
    c = server.connect(ip="198.51.100.4")
    c.send(b"EHLO pc\r\n")
    c.send(b"AUTH PLAIN " + plain(password="wrong") + b"\r\n")
    server.clock.advance(10)  # the throttle's delay before 535
    assert [line for line in log.lines if "auth failed" in line] == [
        "auth failed: SMTP from [198.51.100.4]: user=<alice@example.test> listener=mx"]
    assert rejects(log) == []  # not twice
    assert ("auth_failed", "smtp") in meters.calls


def test_sessions_are_counted_with_their_duration(server: Server) -> None:
    meters = server.factory.policy.meters = RecordingMeters()
    c = server.connect()
    server.clock.advance(2.5)
    c.lose()
    assert meters.calls == [("opened", "smtp", "mx"), ("closed", "smtp", "mx", 2.5)]
