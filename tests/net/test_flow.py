"""FlowControl: reading stops while replies back up or input is held, resumes when both clear."""

from __future__ import annotations

import socket

from twisted.internet import reactor, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from mailgate.net.flow import UNSENT_HARD_LIMIT, FlowControl


def flow_over(transport: StringTransport) -> tuple[FlowControl, list[str]]:
    drained: list[str] = []
    flow = FlowControl(transport, lambda: drained.append("drained"))
    flow.start()
    return flow, drained


def test_registers_as_a_streaming_producer() -> None:
    transport = StringTransport()
    flow, _ = flow_over(transport)
    assert transport.producer is flow and transport.streaming
    flow.stop()
    assert transport.producer is None
    flow.stop()  # twice is harmless


def test_full_write_buffer_blocks_replies_until_drained() -> None:
    transport = StringTransport()
    flow, drained = flow_over(transport)
    flow.pauseProducing()  # as Twisted does past its bufferSize
    assert flow.replies_blocked
    assert transport.producerState == "producing"  # reading goes on: a TLS handshake may need it
    flow.resumeProducing()
    assert not flow.replies_blocked
    assert drained == ["drained"]


def test_held_input_pauses_reading() -> None:
    transport = StringTransport()
    flow, _ = flow_over(transport)
    flow.hold_input(True)
    assert transport.producerState == "paused"
    flow.hold_input(True)
    flow.hold_input(False)
    assert transport.producerState == "producing"
    transport.loseConnection()
    flow.hold_input(True)  # nothing to pause on a closing connection


def test_writes_while_blocked_past_the_hard_limit_abort() -> None:
    transport = StringTransport()
    flow, _ = flow_over(transport)
    assert flow.wrote(10 * UNSENT_HARD_LIMIT)  # not blocked: Twisted's buffer has room
    flow.pauseProducing()
    assert flow.wrote(UNSENT_HARD_LIMIT)
    assert not transport.disconnecting
    assert not flow.wrote(1)
    assert transport.disconnected  # aborted, not closed politely: the client reads nothing
    assert transport.producer is None


def test_small_send_buffer_on_a_tcp_socket() -> None:
    ours, theirs = socket.socketpair()
    try:
        conn = tcp.Connection(ours, Protocol(), reactor)
        flow = FlowControl(conn, lambda: None)
        flow.start(send_buffer_bytes=32 * 1024)
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 32 * 1024  # Linux doubles it
        flow.stop()
    finally:
        ours.close()
        theirs.close()
