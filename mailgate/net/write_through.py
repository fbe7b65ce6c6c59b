"""Send a short reply at once instead of on the reactor's next turn.

Twisted's TCP transport buffers every write() until epoll reports the socket
writable: for a one-line SMTP reply that is two epoll_ctl() calls and one
more reactor iteration before send(), seven times per message for a client
that does not pipeline (strace of a 1 KB message: 16 epoll_ctl, 15
epoll_wait). When nothing is buffered, the socket takes a small reply whole,
so sending it here gives the same bytes in the same order for less work.

Only a plain TCP connection is written to directly; after STARTTLS, on an
implicit-TLS listener, with anything already buffered, a producer attached
or the connection closing, Twisted's own write() carries the data as usual.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def write_through(transport: Any, data: bytes) -> None:
    """Write `data` to `transport`, sending what the socket takes right away."""
    if _idle_plain_tcp(transport):
        sent = transport.writeSomeData(data)
        if isinstance(sent, Exception):
            sent = 0  # Twisted's write path meets the same error and closes the connection
        data = data[sent:]
    if data:
        transport.write(data)


def _idle_plain_tcp(transport: Any) -> bool:
    return (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and transport.producer is None
        and not transport.dataBuffer
        and not transport._tempDataLen  # Twisted's second buffer, not yet joined into dataBuffer
    )
