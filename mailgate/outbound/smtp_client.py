"""The wire level of one outbound SMTP connection, below the relay's dialogue.

Replies are read whole (multi-line ones too) and handed out in order;
commands go out in one write; the message body is streamed from its file
as canonical, dot-stuffed CRLF. What the replies mean is the relay's business.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPullProducer
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from mailgate.core.reply import Reply, ReplyError
from mailgate.net.interfaces import Connection, connection_view
from mailgate.core.wire import CRLFConverter, DotStuffer

BLOCK_SIZE = 64 * 1024


class SessionClosed(Exception):
    """The connection ended, timed out or spoke gibberish; the text says which."""


class ClientProtocol(LineReceiver):
    """Reads replies (multi-line ones whole) and hands them out in order.

    Replies are queued, so pipelined commands can be written at once and
    their replies collected one by one (RFC 2920). One idle timer guards
    every read and the body upload: any silence longer than the timeout
    aborts the connection (RFC 5321 4.5.3.2).
    """

    delimiter = b"\n"  # and strip "\r": a sloppy server's bare LF still ends a line
    MAX_LENGTH = 65536

    def __init__(self, reactor: Any, timeout_seconds: float) -> None:
        self._reactor, self._timeout_seconds = reactor, timeout_seconds
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self.replies_received = 0  # a reused session that dies before any reply took nothing
        self._waiting: Deferred[Reply] | None = None
        self.error: SessionClosed | None = None
        self._timer: Any = None
        self.closed: Deferred[None] = Deferred()

    @property
    def connection(self) -> Connection:
        """The TCP (or TLS) transport; only used while connected."""
        return connection_view(self.transport)

    def connectionMade(self) -> None:
        why = f"no answer within {self._timeout_seconds:g} s"
        self._timer = self._reactor.callLater(self._timeout_seconds, self._abort, why)

    def touch(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout_seconds)

    def dataReceived(self, data: bytes) -> None:
        self.touch()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        code, separator = text[:3], text[3:4]
        if not (code.isdigit() and separator in ("-", " ", "")):
            self._abort(f"malformed reply {text[:80]!r}")
            return
        self._lines.append(text[4:])
        if separator == "-":
            return
        try:
            reply = Reply.from_lines(int(code), self._lines)
        except ReplyError:  # a code outside 2xx-5xx
            self._abort(f"malformed reply {text[:80]!r}")
            return
        self._lines = []
        self.replies_received += 1
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.callback(reply)
        else:
            self._replies.append(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._abort("reply line too long")

    def _abort(self, why: str) -> None:
        self.error = self.error or SessionClosed(why)
        self.connection.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.error is None:
            value = getattr(reason, "value", reason)
            self.error = SessionClosed(f"connection lost: {type(value).__name__}: {value}")
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(self.error)
        self.closed.callback(None)

    def has_unread_reply(self) -> bool:
        return bool(self._replies or self._lines)

    def read_reply(self) -> Deferred[Reply]:
        if self._replies:
            return succeed(self._replies.popleft())
        if self.error is not None:
            return fail(self.error)
        self._waiting = Deferred()
        return self._waiting

    def send(self, *commands: str) -> None:
        """Write commands in one write: with PIPELINING that is one TCP segment."""
        if any(c in command for command in commands for c in "\r\n"):
            raise ValueError(f"line end inside an SMTP command: {commands!r}")
        self.touch()
        self.connection.write("".join(f"{command}\r\n" for command in commands).encode("utf-8"))

    async def quit(self, *, wait_for_reply: bool = True) -> None:
        """Say QUIT (unless the session is already broken) and close.

        After a transaction the 221 is awaited, so the server has the QUIT
        before the socket goes; a session given up on, or closed at a
        server stop, does not wait for a server that may have stalled.
        """
        if self.error is None and not self.closed.called:
            self.send("QUIT")
            if wait_for_reply:
                try:
                    await self.read_reply()
                except SessionClosed:
                    pass  # results are known; a rude goodbye changes nothing
        await self.close()

    async def close(self, *, abort: bool = False) -> None:
        """Close and wait until the socket is really gone (trial checks; fds leak otherwise)."""
        if not self.closed.called:
            self.connection.abortConnection() if abort else self.connection.loseConnection()
        await self.closed


@implementer(IPullProducer)
class BodyProducer:
    """Streams the message file as canonical, dot-stuffed CRLF, 64 KiB at a time.

    A pull producer: the transport asks for the next block only when its
    buffer has drained, so a 1 GB message never sits in memory, and each
    block is converted with a few bytes.replace calls, never per line.
    """

    def __init__(self, handle: BinaryIO, protocol: ClientProtocol) -> None:
        self._handle, self._protocol = handle, protocol
        self._crlf, self._dots = CRLFConverter(), DotStuffer()
        self.done: Deferred[None] = Deferred()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        block = self._handle.read(BLOCK_SIZE)
        self._protocol.touch()  # progress: the remote is still reading
        transport = self._protocol.connection
        if block:
            transport.write(self._dots.feed(self._crlf.feed(block)))
            return
        transport.write(self._dots.feed(self._crlf.finish()) + self._dots.finish())
        transport.unregisterProducer()
        self.done.callback(None)

    def stopProducing(self) -> None:
        if not self.done.called:
            error = self._protocol.error or SessionClosed("connection lost while sending the message")
            self.done.errback(error)


def wire_size(path: str) -> int:
    """An upper bound of the CRLF size for SIZE= (RFC 1870): bytes plus line ends."""
    newlines = 0
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_SIZE):
            newlines += block.count(b"\n")
    return os.path.getsize(path) + newlines
