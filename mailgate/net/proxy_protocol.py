"""The PROXY protocol (HAProxy, v1 and v2) on a listener: who the client behind a balancer is.

Connections from the networks in `listen[].proxy` must begin with a PROXY
header; the server's protocol (and an implicit-TLS handshake) starts only
once it has been read, so the session, its limits and its `Received:`
header see the header's source address from the first moment, through
`getPeer`. Connections from anywhere else are not wrapped at all: a
header from them is just bytes, and the SMTP session refuses it.

Twisted's own `HAProxyWrappingFactory` is not used as it is: it wants the
header in the first read (a header split by TCP closes the connection),
connects the server's protocol before the header is read (its greeting
would name the balancer), and would wrap every client. Its parsers are.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any, Sequence, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from mailgate.net.interfaces import connection_view

log = Logger()

HEADER_TIMEOUT_SECONDS = 10.0  # a balancer sends the header at once; a silent peer is not held longer
V1_PREFIX, V2_PREFIX = b"PROXY ", V2Parser.PREFIX
MAX_V1_HEADER = 107  # the v1 line, CRLF included (the specification's own limit)

Network = IPv4Network | IPv6Network


class ProxyHeaderProtocol(ProtocolWrapper):
    """Reads one PROXY header, then connects the wrapped protocol with the header's addresses."""

    factory: ProxyHeaderFactory

    def __init__(self, factory: ProxyHeaderFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._buffer = b""
        self._info: ProxyInfo | None = None
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        """As ProtocolWrapper's, but the wrapped protocol waits for the header."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(HEADER_TIMEOUT_SECONDS, self._give_up, "no header in time")

    def dataReceived(self, data: bytes) -> None:
        if self._info is not None:
            return self.wrappedProtocol.dataReceived(data)
        self._buffer += data
        try:
            info, rest = self._parse()
        except (InvalidProxyHeader, ValueError):  # v1's parser lets a bad port's ValueError out
            return self._give_up("not a valid PROXY header")
        if info is None:
            return None
        canonical = _canonical(info)
        if canonical is None:
            return self._give_up("the PROXY header's addresses are not IP addresses")
        self._connect(canonical, rest)

    def _parse(self) -> tuple[ProxyInfo | None, bytes]:
        """The header and what follows it, or (None, b"") while it is incomplete."""
        buffer = self._buffer
        if buffer.startswith(V2_PREFIX[: len(buffer)]) and len(buffer) < 16:
            return None, b""
        if buffer.startswith(V2_PREFIX):
            info, rest = V2Parser().feed(buffer)
        elif V1_PREFIX.startswith(buffer[:6]):
            if b"\r\n" not in buffer[:MAX_V1_HEADER]:
                if len(buffer) >= MAX_V1_HEADER:
                    raise InvalidProxyHeader()
                return None, b""
            info, rest = V1Parser().feed(buffer)
        else:
            raise InvalidProxyHeader()
        return (info, rest or b"") if info is not None else (None, b"")

    def _connect(self, info: ProxyInfo, rest: bytes) -> None:
        """The header is read: the wrapped protocol starts now, seeing the client's address."""
        self._cancel_timer()
        self._info, self._buffer = info, b""
        self.wrappedProtocol.makeConnection(cast(ITransport, self))  # a ProtocolWrapper is its transport
        if rest and self.connected:
            self.wrappedProtocol.dataReceived(rest)

    def _give_up(self, why: str) -> None:
        """One line naming the key: a balancer sending no header is a configuration matter."""
        self._timer = None
        peer = getattr(self.transport.getPeer(), "host", "?") if self.transport else "?"
        log.warn("listen[{name}].proxy: connection from {ip} closed: {why}", name=self.factory.listener,
                 ip=peer, why=why)
        if self.transport is not None:
            connection_view(self.transport).abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Closed before any header (a balancer's health check): nothing was started, nothing to say."""
        self._cancel_timer()
        if self._info is None:
            self.factory.unregisterProtocol(self)
            return
        super().connectionLost(reason)

    def getPeer(self) -> IAddress:
        if self._info is not None and self._info.source is not None:
            return self._info.source
        return super().getPeer()

    def getHost(self) -> IAddress:
        if self._info is not None and self._info.destination is not None:
            return self._info.destination
        return super().getHost()


class ProxyHeaderFactory(WrappingFactory["ProxyHeaderProtocol"]):
    """Wraps the connections from the proxies' networks; the others get the wrapped factory's protocol."""

    protocol = ProxyHeaderProtocol
    noisy = False

    def __init__(self, wrapped: Factory, networks: Sequence[Network], clock: IReactorTime, listener: str) -> None:
        super().__init__(wrapped)
        self.networks = tuple(networks)
        self.clock = clock
        self.listener = listener

    def buildProtocol(self, addr: IAddress | None) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None or not from_networks(addr, self.networks):
            return wrapped
        return ProxyHeaderProtocol(self, wrapped)


def _canonical(info: ProxyInfo) -> ProxyInfo | None:
    """The header's addresses written as everywhere else ("2001:db8::7", where v2's parser says
    "2001:db8:0:0:0:0:0:7"); None when one is no IP address (v1's parser takes any word)."""
    addresses: list[IAddress | None] = []
    for address in (info.source, info.destination):
        if address is None or not isinstance(address, (IPv4Address, IPv6Address)):
            addresses.append(address)
            continue
        try:
            host = str(ip_address(address.host))
        except ValueError:
            return None
        addresses.append(type(address)("TCP", host, address.port))
    return ProxyInfo(info.header, addresses[0], addresses[1])


def from_networks(addr: IAddress | None, networks: Sequence[Network]) -> bool:
    """Whether a connection's peer is one of the proxies."""
    try:
        peer = ip_address(getattr(addr, "host", ""))
    except ValueError:
        return False
    return any(peer in network for network in networks)
