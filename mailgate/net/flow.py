"""Backpressure for a server session: reading stops while its client is behind.

A client that pipelines commands and never reads the replies would have the
server buffer every reply it produces: `EHLO a` is 8 octets in and about 150
out, so 16 MB sent grew the server by 240 MB. Registered with the transport as
a streaming producer (Twisted's producer/consumer contract), FlowControl is
told to pause when Twisted's write buffer passes its bufferSize (64 KiB) and
to resume once the buffer has drained; meanwhile the session answers nothing
more (`replies_blocked`), so what the client sends piles up unhandled, and
once that passes the session's own bound it holds its input (`hold_input`):
reading stops, and the kernel's socket buffers push back on the client.

Reading does not stop at the pause itself: TLS pauses its producer too,
while it buffers what is written before its handshake has finished (an
implicit-TLS greeting), and the handshake needs reading to go on.

The kernel's send buffer holds unsent replies too, and Linux grows it up to
net.ipv4.tcp_wmem's maximum (4 MiB) for a client that does not read: 27,000
EHLO replies answered before Twisted's buffer even starts to fill. A session
whose replies are all short (SMTP) asks for a small one instead.

Replies written while paused (the answer of a command already running) still
go out, but past `hard_limit_bytes` of them the connection is aborted: a
client that reads nothing would otherwise hold them forever.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from mailgate.net.interfaces import Connection, socket_of

log = Logger()

UNSENT_HARD_LIMIT = 1024 * 1024  # octets written while paused, on top of Twisted's 64 KiB
SMALL_SEND_BUFFER = 32 * 1024  # SO_SNDBUF asked for (Linux doubles it): a window of short replies


@implementer(IPushProducer)
class FlowControl:
    """The session's side of the producer/consumer contract, and its switch for reading."""

    def __init__(self, connection: Connection, on_drained: Callable[[], None], *,
                 hard_limit_bytes: int = UNSENT_HARD_LIMIT) -> None:
        self._connection = connection
        self._on_drained = on_drained  # the client caught up: go on with the commands read so far
        self._hard_limit = hard_limit_bytes
        self.replies_blocked = False  # Twisted's write buffer is full: answer nothing more
        self._reading_paused = False
        self._registered = False
        self._written_while_blocked = 0

    def start(self, send_buffer_bytes: int | None = None) -> None:
        """Register with the transport, before the first write; and fix the socket's send buffer if asked."""
        self._connection.registerProducer(self, True)
        self._registered = True
        if send_buffer_bytes is not None:
            _set_send_buffer(self._connection, send_buffer_bytes)

    def stop(self) -> None:
        """Unregister, before loseConnection: Twisted keeps a connection with a producer open."""
        if self._registered:
            self._registered = False
            self._connection.unregisterProducer()

    def hold_input(self, held: bool) -> None:
        """Stop (or allow again) reading for the session's own reason: too much input not yet handled."""
        if held == self._reading_paused or self._connection.disconnecting:
            return
        self._reading_paused = held
        if held:
            self._connection.pauseProducing()
        else:
            self._connection.resumeProducing()

    def wrote(self, size: int) -> bool:
        """Count `size` octets just written; False once the connection was aborted for too many unsent."""
        if not self.replies_blocked:
            return True
        self._written_while_blocked += size
        if self._written_while_blocked <= self._hard_limit:
            return True
        peer = getattr(self._connection.getPeer(), "host", "?")
        log.warn("{ip}: client reads no replies, {size} octets unsent: connection aborted",
                 ip=peer, size=self._written_while_blocked)
        self.stop()
        self._connection.abortConnection()
        return False

    # IPushProducer, called by the transport

    def pauseProducing(self) -> None:
        self.replies_blocked = True

    def resumeProducing(self) -> None:
        self.replies_blocked = False
        self._written_while_blocked = 0
        self._on_drained()

    def stopProducing(self) -> None:
        self._registered = False  # the connection is gone; the transport has forgotten us


def _set_send_buffer(connection: Connection, size: int) -> None:
    """SO_SNDBUF on the connection's socket (through a TLS wrapper too); nothing for other transports."""
    handle = socket_of(connection)
    if handle is not None:
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            pass  # the default buffer only costs memory in the kernel
