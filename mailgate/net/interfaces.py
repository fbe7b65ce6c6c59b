"""The one transport type mailgate's protocols call: Twisted's TCP/TLS connection, as used.

Twisted splits a connection's methods over ITransport, ITCPTransport,
ITLSTransport, IProducer and IConsumer, and Protocol.transport is typed
Optional[ITransport]. The SMTP and POP3 servers and the SMTP client call
methods from all of them on the same object, so they hold it as this view,
taken once with `connection_view` where the connection is made. The
reactor's interfaces (IReactorTime, IDelayedCall ...) are used as they are:
mypy reads them through the mypy-zope plugin.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IAddress


class Connection(Protocol):
    """A connected TCP transport, maybe with TLS started on it."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def startTLS(self, contextFactory: Any) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


def connection_view(transport: object) -> Connection:
    """The transport of a connected protocol, as a Connection (a cast: zope checks at run time)."""
    assert transport is not None, "not connected"
    return cast(Connection, transport)


def socket_of(transport: object) -> socket.socket | None:
    """The socket under a TCP transport, through a TLS wrapper too; None for other transports."""
    for _ in range(3):  # the transport, or what a protocol wrapper (TLSMemoryBIOProtocol) wraps
        get_handle = getattr(transport, "getHandle", None)
        try:
            handle = get_handle() if get_handle is not None else None
        except (AttributeError, OSError, NotImplementedError):  # a wrapper whose transport is gone
            return None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
    return None
