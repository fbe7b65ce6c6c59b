"""state.backend = "redis://...": two nodes (two gateways) on one real redis-server enforce one limit."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import Gateway, free_port, gateway_config, wait_for
from tests.support.nodes import kill_running, send_authenticated
from tests.support.redis_server import RedisServer, require_redis

ALICE = "alice@example.test"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    kill_running(made)


def node(tmp_path: Path, name: str, redis: RedisServer, made: list[Gateway], fallback: str = "30s",
         limits: str = "") -> Gateway:
    root = tmp_path / name
    (root / "etc").mkdir(parents=True)
    ports = {"smtp": free_port()}
    extra = (f'[limits]\nconnection_rate = "off"\nsender_rate = "5/hour"\n{limits}[security]\nplaintext_auth = "always"\n'
             f'[state]\nbackend = "{redis.url}"\nfallback_time = "{fallback}"\n')
    (root / "mailgate.toml").write_text(gateway_config(ports, extra))
    gateway = Gateway(root, root / "mailgate.toml", ports)
    made.append(gateway)
    gateway.add_user(ALICE)
    return gateway


def send(gateway: Gateway) -> int:
    """One authenticated message from alice; the MAIL FROM or final reply code."""
    return send_authenticated(gateway, ALICE)


def test_two_nodes_on_one_redis_enforce_one_sender_rate(tmp_path: Path, redis: RedisServer,
                                                       nodes: list[Gateway]) -> None:
    """sender_rate = "5/hour" on two nodes: of 12 messages, alternating nodes, exactly 5 are accepted."""
    first, second = node(tmp_path, "a", redis, nodes).start(), node(tmp_path, "b", redis, nodes).start()
    codes = [send(first if number % 2 else second) for number in range(12)]
    assert codes.count(250) == 5, codes
    assert codes.count(450) == 7, codes


def test_redis_down_fails_open_then_451_then_mail_flows_when_back(tmp_path: Path, redis: RedisServer,
                                                                 nodes: list[Gateway]) -> None:
    gateway = node(tmp_path, "a", redis, nodes, fallback="3s").start()
    assert send(gateway) == 250
    redis.stop()
    assert send(gateway) == 250  # within state.fallback_time: open, with a log line
    wait_for(lambda: "state.backend: Redis at" in gateway.log() and "unreachable (" in gateway.log(), 10,
             "the fail-open log line")
    wait_for(lambda: send(gateway) == 451, 20, "451 4.3.0 past state.fallback_time")
    assert "answering 451 4.3.0 until it is back" in gateway.log()
    redis.start()
    wait_for(lambda: send(gateway) == 250, 40, "mail to flow once Redis is back")
    assert "answers again" in gateway.log()


def test_two_nodes_on_one_redis_count_auth_failures_together(tmp_path: Path, redis: RedisServer,
                                                             nodes: list[Gateway]) -> None:
    """auth_failures_per_account = 2: one wrong password on each node locks the pair out on both."""
    first, second = (node(tmp_path, name, redis, nodes, limits="auth_failures_per_account = 2\n").start()
                     for name in ("a", "b"))
    for gateway in (first, second):
        with pytest.raises((smtplib.SMTPAuthenticationError, smtplib.SMTPServerDisconnected)):
            with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
                client.login(ALICE, "wrong")
    for gateway in (first, second):
        with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login(ALICE, "secret")
            assert refused.value.smtp_code == 454
