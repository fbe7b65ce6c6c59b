"""Streaming a stored message to a POP3 client: blocks from disk, CRLF, dot-stuffing, TOP limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailgate.core.wire import CRLFConverter, DotStuffer
from mailgate.net.interfaces import Connection
from mailgate.net.write_through import write_through
from mailgate.store.maildir_reader import BLOCK_SIZE


class TopLimiter:
    """Pass the headers, the blank line and then `body_lines` lines (TOP, RFC 1939)."""

    def __init__(self, body_lines: int) -> None:
        self._in_headers = True
        self._tail = b"\r\n"  # a message starting with an empty line has no headers
        self._left = body_lines

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """CRLF data in; what to send and whether the limit is reached."""
        head = b""
        if self._in_headers:
            window = self._tail + data
            index = window.find(b"\r\n\r\n")
            if index < 0:
                self._tail = window[-3:]  # the separator may straddle blocks
                return data, False
            end = index + 4 - len(self._tail)
            self._in_headers = False
            head, data = data[:end], data[end:]
        if self._left <= 0:
            return head, True
        parts = data.split(b"\n", self._left)  # one C call, not one per line
        if len(parts) <= self._left:
            self._left -= len(parts) - 1
            return head + data, False
        return head + data[: len(data) - len(parts[-1])], True


@implementer(IPullProducer)
class MessageSender:
    """Stream one message file as a POP3 multi-line response, a block at a time.

    Never holds the message in memory: each pull reads BLOCK_SIZE bytes,
    converts line ends, applies the TOP limit and dot-stuffs with bytes
    methods, so the cost is per block, not per line.
    """

    def __init__(self, handle: IO[bytes], top_lines: int | None, on_progress: Callable[[], None]) -> None:
        self._handle = handle
        self._converter = CRLFConverter()
        self._limiter = TopLimiter(top_lines) if top_lines is not None else None
        self._stuffer = DotStuffer()
        self._on_progress = on_progress
        self._consumer: Connection | None = None
        self._done: Deferred[None] = Deferred()

    def begin(self, consumer: Connection, first_line: bytes) -> Deferred[None]:
        """Send the status line and the message.

        A message within one block (most mail), or a TOP that ends in it,
        goes out in one write with its status line, at once: no producer,
        no reactor turn per message.
        """
        try:
            block = self._handle.read(BLOCK_SIZE)  # buffered: short only at the end of the file
        except OSError:
            consumer.write(first_line)
            self._handle.close()
            self._done.errback(Failure())
            return self._done
        out, complete = self._convert(block)
        if len(block) < BLOCK_SIZE and not complete:
            tail, complete = self._convert(b"")
            out += tail
        if complete:
            self._handle.close()
            write_through(consumer, first_line + out)
            self._done.callback(None)
            return self._done
        consumer.write(first_line + out)
        self._consumer = consumer
        consumer.registerProducer(self, False)
        return self._done

    def resumeProducing(self) -> None:
        # Loop until something is written: a pull producer that writes
        # nothing is never asked again and the session would hang.
        while self._consumer is not None:
            try:
                block = self._handle.read(BLOCK_SIZE)
            except OSError:
                self._finish(Failure())
                return
            out, complete = self._convert(block)
            if complete:
                self._consumer.write(out)
                self._finish(None)
                return
            if out:
                self._consumer.write(out)
                self._on_progress()
                return

    def _convert(self, block: bytes) -> tuple[bytes, bool]:
        """The wire form of the next block (b"": the file ended) and whether the response is complete."""
        data = self._converter.feed(block) if block else self._converter.finish()
        limit_reached = False
        if self._limiter is not None:
            data, limit_reached = self._limiter.feed(data)
        out = self._stuffer.feed(data)
        if not block or limit_reached:
            return out + self._stuffer.finish(), True
        return out, False

    def stopProducing(self) -> None:
        self._finish(Failure(ConnectionAbortedDuringSend()))

    def _finish(self, failure: Failure | None) -> None:
        if self._consumer is None:
            return
        consumer, self._consumer = self._consumer, None
        self._handle.close()
        consumer.unregisterProducer()
        if failure is None:
            self._done.callback(None)
        else:
            self._done.errback(failure)


class ConnectionAbortedDuringSend(Exception):
    """The transport stopped the producer: the client went away mid-message."""
