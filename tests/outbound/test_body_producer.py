"""BodyProducer: the message as dot-stuffed CRLF, in blocks; a short message in one write with its dot."""

from __future__ import annotations

import io

import pytest
from twisted.internet.testing import StringTransport

from mailgate.outbound.smtp_client import BLOCK_SIZE, BodyProducer, Timeouts


class Protocol:
    """What BodyProducer asks of the client protocol: a connection, a timer, progress."""

    def __init__(self) -> None:
        self.connection = StringTransport()
        self.timeouts = Timeouts()
        self.producer: object = None
        self.touched = 0

    def expect(self, seconds: float, what: str) -> None:
        pass

    def touch(self) -> None:
        self.touched += 1


def produce(data: bytes) -> tuple[bytes, int]:
    """What the producer writes for `data`, and in how many writes (the transport pulls until done)."""
    protocol = Protocol()
    writes: list[bytes] = []
    protocol.connection.write = writes.append  # type: ignore[method-assign]
    producer = BodyProducer(io.BufferedReader(io.BytesIO(data)), protocol)  # type: ignore[arg-type]
    done = producer.start()
    while not done.called:
        producer.resumeProducing()
    return b"".join(writes), len(writes)


def test_a_short_message_goes_in_one_write_with_its_dot() -> None:
    sent, writes = produce(b"Subject: s\n\n.hi\nthere\n")
    assert sent == b"Subject: s\r\n\r\n..hi\r\nthere\r\n.\r\n"
    assert writes == 1


@pytest.mark.parametrize("size", [BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE - 5])
def test_a_long_message_goes_whole_in_blocks(size: int) -> None:
    """Around the block size: every byte once, stuffed and converted, the dot once at the end."""
    line = b".x" + b"y" * 60 + b"\n"
    data = (line * (size // len(line) + 1))[:size]
    sent, writes = produce(data)
    expected = data.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    expected = (b"." + expected if expected.startswith(b".") else expected)
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert sent == expected + b".\r\n"
    assert writes == size // BLOCK_SIZE + 1
