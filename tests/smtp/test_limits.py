# ruff: noqa: F401, F811  -- pytest fixtures are imported from test_smtp_server and named as arguments
"""Limits and abuse resistance in the SMTP session: rates, error counts, trickling, full disks."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

import pytest
from twisted.internet.task import Clock

from mailgate.config import SenderRate
from mailgate.inbound.transaction import storage_failure
from mailgate.limits.rate import RateLimiter
from tests.support.smtp_session import ALICE, TIMEOUT, Client, Server, transaction


def test_rate_limiter_refills_continuously() -> None:
    clock = Clock()
    limiter = RateLimiter(SenderRate(2, 60.0), clock)
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(30.0)
    assert limiter.take("b") == 0.0  # per key
    clock.advance(30)
    assert limiter.take("a") == 0.0
    assert RateLimiter(None, clock).take("a") == 0.0  # "off"


def test_sender_rate_per_authenticated_user(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"sender_rate": "2/hour"})
    c = server.connect()
    c.send(b"EHLO client.test\r\n")
    c.protocol.state.authenticated(ALICE)  # AUTH itself is tested in test_auth
    for _ in range(2):
        assert c.send(b"MAIL FROM:<alice@example.test>\r\nRSET\r\n")[0].startswith("250 ")
    [refused] = c.send(b"MAIL FROM:<alice@example.test>\r\n")
    assert refused.startswith("450 4.7.1 ") and "try again in 1800 seconds" in refused
    server.clock.advance(1800)
    later = server.connect()  # the first session has long timed out
    later.send(b"EHLO client.test\r\n")
    later.protocol.state.authenticated(ALICE)
    assert later.send(b"MAIL FROM:<alice@example.test>\r\n")[0].startswith("250 ")


def test_unauthenticated_senders_are_not_rate_limited_per_user(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"sender_rate": "1/hour"})
    c = server.connect()
    c.send(b"EHLO client.test\r\n")
    assert c.send_codes(b"MAIL FROM:<x@remote.test>\r\nRSET\r\n" * 3) == [250, 250] * 3


def test_connection_rate_per_ip(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"connection_rate": "3/minute"})
    for _ in range(3):
        assert server.connect().greeting.startswith(b"220 ")
    refused = server.connect()
    assert refused.greeting.startswith(b"421 4.7.0 ")
    assert refused.transport.disconnecting
    assert server.connect(ip="127.0.0.9").greeting.startswith(b"220 ")


def test_too_many_bad_commands_close_the_session(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"max_bad_commands": 3})
    c = server.connect()
    answers = c.send(b"BOGUS\r\n" * 4 + b"NOOP\r\n")
    assert [a[:3] for a in answers] == ["500", "500", "500", "421"]
    assert c.transport.disconnecting


def test_trickled_command_line_times_out(server: Server, client: Client) -> None:
    """A byte every few seconds never completes a line: the idle timer runs on."""
    for _ in range(TIMEOUT // 10):
        client.protocol.dataReceived(b"N")
        server.clock.advance(10)
    server.clock.advance(11)
    assert client.transport.value().endswith(b"421 4.4.2 Timeout exceeded, closing connection\r\n")
    assert client.transport.disconnecting


def test_trickled_data_times_out(server: Server, client: Client) -> None:
    client.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    for _ in range(TIMEOUT // 10 + 2):
        client.protocol.dataReceived(b"x")
        server.clock.advance(10)
    assert b"421 4.4.2 " in client.transport.value()
    assert server.deliverer.calls == []


def test_data_phase_has_a_total_deadline(make_server: Callable[..., Server]) -> None:
    """Even a steady kilobyte per interval cannot stretch DATA past limits.data_timeout."""
    server = make_server(limits={"data_timeout": "10m"})
    c = server.connect()
    c.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    for _ in range(61):
        c.protocol.dataReceived(b"y" * 100 + b"\r\n" + b"z" * 1000 + b"\r\n")
        server.clock.advance(10)
    assert b"421 4.4.2 " in c.transport.value()
    assert server.deliverer.calls == []


def test_a_normal_transaction_cancels_the_data_deadline(server: Server, client: Client) -> None:
    assert client.send_codes(transaction())[-1] == 250
    assert not [call for call in server.clock.getDelayedCalls() if call.func == client.protocol.timeoutConnection]


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_is_452_4_3_1(number: int) -> None:
    failure = storage_failure(OSError(number, "No space left on device"), "maildir")
    assert str(failure.reply) == "452 4.3.1 Insufficient system storage"


def test_other_storage_errors_are_451() -> None:
    assert storage_failure(OSError(errno.EIO, "I/O error"), "queue").code == 451


def test_deliverer_full_disk_answer_reaches_the_client(server: Server, client: Client) -> None:
    server.deliverer.error = storage_failure(OSError(errno.ENOSPC, "full"), "maildir")
    answers = client.send(transaction() + b"NOOP\r\n")
    assert answers[-2].startswith("452 4.3.1 ") and answers[-1].startswith("250 ")
