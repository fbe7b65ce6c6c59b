"""A client that does not read its replies: the session stops answering and reading, then goes on."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from mailgate.smtp.session import CLOSE_GRACE_SECONDS, MAX_UNHANDLED_INPUT
from tests.support.smtp_session import Client, Server, codes, transaction


class SmallBufferTransport(StringTransport):
    """Pauses its streaming producer once `limit` octets are written, as Twisted's TCP transport does
    past its bufferSize; `drain()` is the client reading everything."""

    def __init__(self, limit: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.9", 4321))
        self.limit = limit
        self.paused_producer = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.limit and self.producer is not None and not self.paused_producer:
            self.paused_producer = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.paused_producer:
            self.paused_producer = False
            self.producer.resumeProducing()
        return data


def test_long_pipelined_batch_stops_when_replies_back_up(server: Server) -> None:
    transport = SmallBufferTransport(limit=64 * 1024)
    client = Client(*_connected(server, transport))
    client.protocol.dataReceived(b"NOOP\r\n" * 20_000)
    first = codes(transport.value())
    assert 0 < len(first) < 20_000  # answered in parts, not all at once
    assert transport.producerState == "paused"  # and not reading meanwhile
    received = [*first]
    transport.drain()
    while len(received) < 20_000:
        more = codes(transport.drain())
        assert more, "the session did not go on after the client caught up"
        received += more
    assert set(received) == {250}
    assert transport.producerState == "producing"
    assert not transport.disconnecting


def test_nothing_is_answered_while_the_client_is_behind(server: Server) -> None:
    transport = SmallBufferTransport(limit=10**9)
    client = Client(*_connected(server, transport))
    client.protocol._flow.pauseProducing()
    client.protocol.dataReceived(b"NOOP\r\nNOOP\r\n")
    assert transport.value() == b""
    client.protocol._flow.resumeProducing()
    assert codes(transport.value()) == [250, 250]


def test_closing_session_whose_client_reads_nothing_is_aborted(server: Server) -> None:
    client = server.connect()
    assert client.send_codes(b"QUIT\r\n") == [221]
    assert client.transport.disconnecting and not client.transport.disconnected
    assert client.transport.producer is None  # unregistered: Twisted would keep the connection open
    server.clock.advance(CLOSE_GRACE_SECONDS)
    assert client.transport.disconnected


def _connected(server: Server, transport: StringTransport):
    protocol = server.factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol, transport


def test_input_arriving_while_a_command_waits_is_bounded(server: Server) -> None:
    """Past 64 KiB of commands read but not handled (the session waits on a delivery), reading
    pauses; once the delivery answers, every command is answered in order and reading resumes."""
    client = server.connect()
    client.send(b"EHLO client.test\r\n")
    server.deliverer.gate = Deferred()
    assert client.send_codes(transaction()) == [250, 250, 354]  # the final 250 waits for the delivery
    client.transport.clear()
    client.protocol.dataReceived(b"NOOP\r\n" * (MAX_UNHANDLED_INPUT // 12))
    assert client.transport.producerState == "producing"  # half the bound: still reading
    client.protocol.dataReceived(b"NOOP\r\n" * (MAX_UNHANDLED_INPUT // 6))
    assert client.transport.producerState == "paused"
    assert client.transport.value() == b""
    server.deliverer.gate.callback(None)
    answered = codes(client.transport.value())
    assert answered[0] == 250 and len(answered) == 1 + MAX_UNHANDLED_INPUT // 12 + MAX_UNHANDLED_INPUT // 6
    assert set(answered) == {250}
    assert client.transport.producerState == "producing"
