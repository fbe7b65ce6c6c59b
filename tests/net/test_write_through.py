"""write_through: small replies leave at once on plain TCP, in order, never bypass TLS, and fall back to write()."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest
from twisted.internet import reactor, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from mailgate.net.write_through import write_through


@pytest.fixture
def connection() -> Iterator[tuple[tcp.Connection, socket.socket]]:
    """A Twisted TCP connection over one end of a socket pair; the test reads the other end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    conn = tcp.Connection(ours, Protocol(), reactor)
    conn.connected = True
    yield conn, theirs
    conn.stopWriting()
    ours.close()
    theirs.close()


def pending(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.settimeout(5)


def test_an_idle_connection_sends_without_the_reactor(connection) -> None:
    conn, theirs = connection
    write_through(conn, b"250 2.1.0 Ok\r\n")
    assert pending(theirs) == b"250 2.1.0 Ok\r\n"  # no reactor iteration ran
    assert not conn.dataBuffer and not conn._tempDataBuffer


def test_buffered_data_keeps_its_place(connection) -> None:
    conn, theirs = connection
    conn.write(b"first\r\n")  # waiting for the reactor
    write_through(conn, b"second\r\n")
    assert pending(theirs) == b""  # not sent ahead of what was buffered
    conn.doWrite()
    assert theirs.recv(100) == b"first\r\nsecond\r\n"


def test_a_tls_connection_goes_through_its_own_write(connection) -> None:
    conn, theirs = connection
    written = []
    conn.TLS = True
    conn.write = written.append  # as _newtls does: the TLS layer encrypts what write() gets
    write_through(conn, b"secret\r\n")
    assert written == [b"secret\r\n"]
    assert pending(theirs) == b""


def test_a_closing_connection_is_left_to_twisted(connection) -> None:
    conn, theirs = connection
    conn.disconnecting = True
    write_through(conn, b"221 Bye\r\n")
    assert pending(theirs) == b""
    assert conn._tempDataBuffer == [b"221 Bye\r\n"]


def test_other_transports_get_a_plain_write() -> None:
    transport = StringTransport()
    write_through(transport, b"220 ready\r\n")
    assert transport.value() == b"220 ready\r\n"


INTERNALS = ["TLS", "connected", "disconnecting", "_writeDisconnected", "producer", "streamingProducer",
             "dataBuffer", "_tempDataLen", "writeSomeData"]


def without(conn: tcp.Connection, name: str) -> None:
    """Make `conn` look like a Twisted release that no longer has the internal `name`."""

    def missing(self: object) -> None:
        raise AttributeError(name)

    conn.__class__ = type("FutureConnection", (tcp.Connection,), {name: property(missing, lambda self, value: None)})


@pytest.mark.parametrize("name", INTERNALS)
def test_a_transport_lacking_the_internals_gets_a_plain_write(connection, name: str) -> None:
    conn, theirs = connection
    written = []
    conn.write = written.append
    without(conn, name)
    with pytest.raises(AttributeError):
        getattr(conn, name)
    write_through(conn, b"250 2.1.0 Ok\r\n")
    assert written == [b"250 2.1.0 Ok\r\n"]
    assert pending(theirs) == b""  # nothing went around write()
