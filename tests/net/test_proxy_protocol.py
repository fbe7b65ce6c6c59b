"""The PROXY header reader in memory: who is wrapped, headers in pieces, what ends a connection."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailgate.net.proxy_protocol import HEADER_TIMEOUT_SECONDS, ProxyHeaderFactory, ProxyHeaderProtocol

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([203, 0, 113, 7, 127, 0, 0, 1]) + b"\x9c\x40\x00\x19"


class Recorder(Protocol):
    def __init__(self) -> None:
        self.peer: str | None = None
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer().host

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


class Recorders(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: object) -> Recorder:
        self.built.append(Recorder())
        return self.built[-1]


def connect(source: str = "10.0.0.1") -> tuple[object, StringTransport, Recorders, Clock]:
    recorders, clock = Recorders(), Clock()
    factory = ProxyHeaderFactory(recorders, [ip_network("10.0.0.0/8")], clock, "mx")
    peer = IPv4Address("TCP", source, 5555)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport, recorders, clock


def test_peers_outside_the_networks_are_not_wrapped() -> None:
    protocol, _, recorders, _ = connect("192.0.2.1")
    assert not isinstance(protocol, ProxyHeaderProtocol)
    assert recorders.built[0].peer == "192.0.2.1"


@pytest.mark.parametrize("header", [b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n", V2_HEADER], ids=["v1", "v2"])
@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_the_header_in_any_pieces(header: bytes, piece: int) -> None:
    protocol, _, recorders, clock = connect()
    stream = header + b"EHLO x\r\n"
    for start in range(0, len(stream), piece):
        protocol.dataReceived(stream[start:start + piece])
    [recorder] = recorders.built
    assert recorder.peer == "203.0.113.7"
    assert recorder.received == b"EHLO x\r\n"
    assert not clock.getDelayedCalls()  # the header timer is gone


def test_nothing_starts_before_the_header() -> None:
    protocol, _, recorders, _ = connect()
    protocol.dataReceived(b"PROXY TCP4 203.0.113.7")
    assert recorders.built[0].peer is None  # not connected: no greeting could have gone


def test_a_health_check_is_silent() -> None:
    protocol, _, recorders, clock = connect()
    protocol.connectionLost(None)
    assert not recorders.built[0].lost  # never connected, so never told
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("data", [b"EHLO x\r\n", b"PROXY TCP4 evil.test 127.0.0.1 1 25\r\n",
                                  b"PROXY TCP4 1.2.3.4 127.0.0.1 x 25\r\n", b"PROXY " + b"1" * 120,
                                  V2_SIGNATURE + b"\x31\x11\x00\x00"])
def test_anything_but_a_header_aborts(data: bytes) -> None:
    protocol, transport, recorders, _ = connect()
    protocol.dataReceived(data)
    assert transport.disconnecting or getattr(transport, "aborted", False) or transport.disconnected
    assert recorders.built[0].peer is None


def test_no_header_in_time_aborts() -> None:
    protocol, transport, recorders, clock = connect()
    clock.advance(HEADER_TIMEOUT_SECONDS)
    assert transport.disconnecting or transport.disconnected
    assert recorders.built[0].peer is None
