"""Admission: one decision per new connection, for the whole server."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from mailgate.config import LimitsConfig, SenderRate
from mailgate.limits.admission import Admission, AdmissionGate, Refusal, descriptor_limit, descriptor_reserve
from mailgate.pop3.session import POP3Factory
from tests.support.pop3_session import FakeAccounts, FakeReactor, TLSCapableTransport
from tests.support.smtp_session import Server, codes


def admission(**limits: object) -> Admission:
    return Admission(LimitsConfig(**limits), Clock(), descriptors=1024)  # type: ignore[arg-type]


def test_per_address_limit() -> None:
    gate = admission(max_connections_per_ip=2, connection_rate=None)
    assert [gate.enter("192.0.2.1") for _ in range(3)] == [None, None, Refusal.PER_IP]
    assert gate.enter("192.0.2.2") is None
    gate.leave("192.0.2.1")
    gate.leave("192.0.2.1")
    assert gate.enter("192.0.2.1") is None


def test_rate_per_address() -> None:
    gate = admission(connection_rate=SenderRate(2, 60.0))
    assert [gate.enter("192.0.2.1") for _ in range(3)] == [None, None, Refusal.RATE]


def test_total_defaults_to_the_descriptors_less_a_reserve() -> None:
    gate = admission(connection_rate=None, max_connections_per_ip=10_000)
    assert gate.max_connections == 1024 - 128
    results = [gate.enter(f"10.0.{n >> 8}.{n & 255}") for n in range(897)]
    assert results[:-1] == [None] * 896 and results[-1] is Refusal.FULL
    assert descriptor_reserve(100) == 64  # never less
    assert descriptor_limit() > 0


def test_total_from_the_configuration() -> None:
    gate = admission(max_connections=2, connection_rate=None)
    assert [gate.enter(ip) for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3")] == [None, None, Refusal.FULL]


def test_descriptor_near_the_limit_is_refused_whatever_the_count() -> None:
    gate = admission(connection_rate=None)
    assert gate.enter("192.0.2.1", descriptor=900) is None
    assert gate.enter("192.0.2.2", descriptor=1024 - 64) is Refusal.FULL  # half the reserve of 128 left


def pop3_factory(shared: Admission) -> POP3Factory:
    return POP3Factory(accounts=FakeAccounts({}), maildir_root="/nonexistent", hostname="mail.example.test",
                       tls_options=None, plaintext_auth="always", reactor=FakeReactor(), admission=shared)


def test_pop3_connections_are_limited_and_counted_with_smtp(tmp_path: Path) -> None:
    """One Admission for the server: SMTP and POP3 sessions from one address count together."""
    smtp = Server(tmp_path, limits={"max_connections_per_ip": 3})
    pop3 = pop3_factory(smtp.factory.policy.admission)
    first = smtp.connect(ip="192.0.2.7")
    sessions = []
    for _ in range(3):
        protocol, transport = pop3.buildProtocol(None), TLSCapableTransport("192.0.2.7")
        protocol.makeConnection(transport)
        sessions.append((protocol, transport))
    assert [t.value().split(b" ")[0] for _, t in sessions] == [b"+OK", b"+OK", b"-ERR"]
    assert sessions[2][1].value() == b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"
    assert sessions[2][1].disconnecting
    assert codes(smtp.connect(ip="192.0.2.7").greeting) == [421]
    sessions[0][0].connectionLost(None)
    sessions[2][0].connectionLost(None)
    assert codes(smtp.connect(ip="192.0.2.8").greeting) == [220]  # another address
    first.lose()
    protocol, transport = pop3.buildProtocol(None), TLSCapableTransport("192.0.2.7")
    protocol.makeConnection(transport)
    assert transport.value().startswith(b"+OK ")


def test_saturated_past_a_quarter_of_the_reserve_more() -> None:
    gate = admission(connection_rate=None, max_connections_per_ip=10_000)
    for n in range(896 + 31):  # 896 admitted, then refusals that still hold their descriptors
        gate.enter(f"10.0.{n >> 8}.{n & 255}")
    assert not gate.saturated()
    gate.enter("10.9.9.9")
    assert gate.saturated()
    gate.leave("10.9.9.9")
    assert not gate.saturated()


def test_gate_builds_no_protocol_while_saturated() -> None:
    built = []

    class Recording(Factory):
        def buildProtocol(self, addr):
            built.append(addr)
            return Protocol()

    gate = admission(max_connections=1, connection_rate=None)
    factory = AdmissionGate(Recording(), gate)
    assert isinstance(factory.buildProtocol(None), Protocol)
    for n in range(1 + 128 // 4):  # the limit, and a quarter of the reserve of refusals
        gate.enter(f"10.0.0.{n}")
    assert factory.buildProtocol(None) is None
    assert len(built) == 1
