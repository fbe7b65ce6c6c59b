"""The wire level of one outbound SMTP connection, below the relay's dialogue.

Replies are read whole (multi-line ones too) and handed out in order, each
awaited under its command's own timeout; commands go out in one write; the
message body is streamed from its file as canonical, dot-stuffed CRLF.
What the replies mean is the relay's business.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, BinaryIO, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPullProducer
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from mailgate.core.reply import Reply, ReplyError
from mailgate.net.interfaces import Connection, connection_view
from mailgate.net.write_through import write_through
from mailgate.core.wire import CRLFConverter, DotStuffer

BLOCK_SIZE = 64 * 1024


class SessionClosed(Exception):
    """The connection ended, timed out or spoke gibberish; the text says which."""


@dataclass(frozen=True)
class Timeouts:
    """RFC 5321 4.5.3.2: how long to wait for each reply, in seconds.

    Per command, never one figure for the whole session: the reply after
    the final dot gets 10 minutes, because a server may take long to commit
    the message, and a client that gives up sooner sends the same message
    again at the next attempt (a duplicate). Tests shorten them (`uniform`).
    """

    greeting: float = 300.0  # the initial 220
    mail: float = 300.0  # MAIL FROM
    rcpt: float = 300.0  # each RCPT TO
    data_init: float = 120.0  # DATA, until its 354
    data_block: float = 180.0  # each block of the message, until the server takes it
    data_end: float = 600.0  # the final dot, until its reply
    command: float = 300.0  # EHLO, HELO, STARTTLS, RSET, QUIT: the RFC names none; Postfix waits 300 s

    @classmethod
    def uniform(cls, seconds: float) -> Timeouts:
        """Every wait the same length (tests)."""
        return cls(**{field.name: seconds for field in fields(cls)})


class ClientProtocol(LineReceiver):
    """Reads replies (multi-line ones whole) and hands them out in order.

    Replies are queued, so pipelined commands can be written at once and
    their replies collected one by one (RFC 2920). A timer runs only while
    the client waits: for a reply (`read_reply`, each with its command's
    timeout) or for the server to take the message (`expect`); silence that
    long aborts the connection (RFC 5321 4.5.3.2). Bytes arriving, or a
    block of the message taken, start the wait anew. Between transactions
    nothing is awaited and no timer runs (a cached session has its own).
    """

    delimiter = b"\n"  # and strip "\r": a sloppy server's bare LF still ends a line
    MAX_LENGTH = 65536

    def __init__(self, reactor: Any, timeouts: Timeouts) -> None:
        self._reactor, self.timeouts = reactor, timeouts
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self.replies_received = 0  # a reused session that dies before any reply took nothing
        self._waiting: Deferred[Reply] | None = None
        self.error: SessionClosed | None = None
        self._timer: Any = None
        self._timer_seconds = 0.0
        self.producer: BodyProducer | None = None  # the message being sent, if any
        self.closed: Deferred[None] = Deferred()
        self.on_reply: Callable[[Reply], None] | None = None  # every reply, as it comes (throttle detection)

    @property
    def connection(self) -> Connection:
        """The TCP (or TLS) transport; only used while connected."""
        return connection_view(self.transport)

    def expect(self, seconds: float, what: str) -> None:
        """Give the server `seconds` of silence before `what` counts as lost (one timer)."""
        self._disarm()
        self._timer_seconds = seconds
        self._timer = self._reactor.callLater(seconds, self._abort, f"{what}: no answer within {seconds:g} s")

    def touch(self) -> None:
        """Progress: the wait under way starts again."""
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timer_seconds)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

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
        if self.on_reply is not None:
            self.on_reply(reply)
        if self._waiting is not None:
            self._disarm()  # before the callback: it may start the next wait
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
        self._disarm()
        if self.error is None:
            value = getattr(reason, "value", reason)
            self.error = SessionClosed(f"connection lost: {type(value).__name__}: {value}")
        if self.producer is not None:  # TCP stops it too; stopping twice is harmless
            self.producer.stopProducing()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(self.error)
        self.closed.callback(None)

    def has_unread_reply(self) -> bool:
        return bool(self._replies or self._lines)

    def read_reply(self, seconds: float, what: str) -> Deferred[Reply]:
        """The next reply, to `what` (a command's name), given up on after `seconds` of silence."""
        self._disarm()
        if self._replies:
            return succeed(self._replies.popleft())
        if self.error is not None:
            return fail(self.error)
        self._waiting = Deferred()
        self.expect(seconds, what)
        return self._waiting

    def send(self, *commands: str) -> None:
        """Write commands in one write, sent at once (mailgate.net.write_through): with PIPELINING
        that is one TCP segment, and no reactor turn waits before it goes."""
        if any(c in command for command in commands for c in "\r\n"):
            raise ValueError(f"line end inside an SMTP command: {commands!r}")
        write_through(self.connection, "".join(f"{command}\r\n" for command in commands).encode("utf-8"))

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
                    await self.read_reply(self.timeouts.command, "QUIT")
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
    A server that takes no block for `Timeouts.data_block` is given up on.
    """

    def __init__(self, handle: BinaryIO, protocol: ClientProtocol) -> None:
        self._handle, self._protocol = handle, protocol
        self._crlf, self._dots = CRLFConverter(), DotStuffer()
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """Send the whole message; fires once the last block (with the dot) is written."""
        self._protocol.expect(self._protocol.timeouts.data_block, "message data")
        self._protocol.producer = self
        self._protocol.connection.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        block = self._handle.read(BLOCK_SIZE)
        self._protocol.touch()  # progress: the remote is still reading
        transport = self._protocol.connection
        if len(block) == BLOCK_SIZE:
            transport.write(self._dots.feed(self._crlf.feed(block)))
            return
        # A short read is the end of the file: the rest and the dot in one write (a 1 KB message
        # in one segment), not one more reactor turn and send for the dot alone.
        end = self._dots.feed(self._crlf.feed(block)) if block else b""
        transport.write(end + self._dots.feed(self._crlf.finish()) + self._dots.finish())
        transport.unregisterProducer()
        self._protocol.producer = None
        self.done.callback(None)

    def stopProducing(self) -> None:
        self._protocol.producer = None
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
