"""Send a short reply at once instead of on the reactor's next turn.

Twisted's TCP transport buffers every write() until epoll reports the socket
writable: for a one-line SMTP reply that is two epoll_ctl() calls and one
more reactor iteration before send(), seven times per message for a client
that does not pipeline (strace of a 1 KB message: 16 epoll_ctl, 15
epoll_wait). When nothing is buffered, the socket takes a small reply whole,
so sending it here gives the same bytes in the same order for less work.

Only a plain TCP connection is written to directly; after STARTTLS, on an
implicit-TLS listener, with anything already buffered, a pull producer
attached or the connection closing, Twisted's own write() carries the data as
usual. A streaming producer (the session's own mailgate.net.flow.FlowControl)
does not stand in the way: with nothing buffered it cannot be paused, and
what the socket does not take goes through write(), which pauses it.

Telling those cases apart reads Twisted's internals (tcp.Connection's TLS,
connected, disconnecting, _writeDisconnected, producer, streamingProducer,
dataBuffer, _tempDataLen and writeSomeData), which no release promises to keep: when
any of them is missing, the data goes through write() like any transport's.
Slower by a reactor turn, never wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from twisted.internet import tcp
from twisted.internet.error import ConnectionLost


class _Writable(Protocol):
    def write(self, data: bytes) -> None: ...


def write_through(transport: object, data: bytes) -> None:
    """Write `data` to `transport` (an ITransport or IConsumer), sending what the socket takes right away."""
    send_now = _direct_send(transport)
    if send_now is not None:
        sent = send_now(data)
        if isinstance(sent, Exception):
            sent = 0  # Twisted's write path meets the same error and closes the connection
        data = data[sent:]
    if data:
        cast(_Writable, transport).write(data)  # zope's ITransport and IConsumer are opaque to mypy


def _direct_send(transport: object) -> Callable[[bytes], int | ConnectionLost] | None:
    """The socket's send() of an idle plain TCP connection; None for anything else."""
    if not isinstance(transport, tcp.Connection):
        return None
    try:
        busy = (
            transport.TLS
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
            or (not transport.streamingProducer and transport.producer is not None)  # a pull producer
            or transport.dataBuffer
            or transport._tempDataLen  # Twisted's second buffer, not yet joined into dataBuffer
        )
        return None if busy else transport.writeSomeData
    except AttributeError:  # a Twisted without one of these internals
        return None
