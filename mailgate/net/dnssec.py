"""DNS answers with their AD bit: what a DNSSEC-validating resolver says is secure (RFC 4035 3.2.3, RFC 6840 5.7).

twisted.names hands back records without the header, so these queries are
made here, on one UDP socket each, with the AD bit set in the query (a
validating resolver such as unbound then says whether the answer
validated). Only the servers of `relay.nameservers` (or /etc/resolv.conf's)
are asked; mailgate validates nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.names import dns

from mailgate.net.dns import OUTBOUND_DNS_TIMEOUTS, TemporaryDNSError, parse_nameserver

TLSA = 52  # RFC 6698


@dataclass(frozen=True)
class SecureAnswer:
    records: list[dns.RRHeader]  # of the type asked
    secure: bool  # the AD bit: the resolver validated the answer (or the name's absence)


class _ADQuery(dns.DNSDatagramProtocol):
    """Sets AD in every query it sends (RFC 6840 5.7: ask for the AD bit)."""

    def writeMessage(self, message: dns.Message, address: Any) -> None:  # noqa: N802 - Twisted's name
        message.authenticData = 1
        super().writeMessage(message, address)


class _Controller:
    def messageReceived(self, message: dns.Message, protocol: Any, address: Any = None) -> None:  # noqa: N802
        """A late or stray answer: dropped."""


def system_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        with open(path) as handle:
            return [line.split()[1] for line in handle if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        return ["127.0.0.1"]


class SecureResolver:
    """Queries whose answers say whether they validated."""

    def __init__(self, nameservers: Sequence[str], reactor: Any,
                 timeouts: Sequence[float] = OUTBOUND_DNS_TIMEOUTS) -> None:
        self.servers = [parse_nameserver(entry) for entry in (nameservers or system_nameservers())]
        self._reactor, self._timeouts = reactor, tuple(timeouts)

    async def query(self, name: str, qtype: int) -> SecureAnswer:
        """NOERROR and NXDOMAIN are answers (no records); anything else, or silence, TemporaryDNSError."""
        for timeout in self._timeouts:
            for server in self.servers:
                try:
                    message = await self._ask(server, name, qtype, timeout)
                except DeferredTimeoutError:
                    continue
                if message.rCode not in (dns.OK, dns.ENAME):
                    raise TemporaryDNSError(f"Temporary DNS failure for {name}",
                                            reason=f"DNS rcode {message.rCode} for {name}")
                records = [answer for answer in message.answers if answer.type == qtype]
                return SecureAnswer(records, bool(message.authenticData))
        raise TemporaryDNSError(f"Temporary DNS failure for {name}", reason=f"DNS timeout looking up {name}")

    async def _ask(self, server: tuple[str, int], name: str, qtype: int, timeout: float) -> dns.Message:
        protocol = _ADQuery(_Controller(), reactor=self._reactor)
        port = self._reactor.listenUDP(0, protocol, interface="::" if ":" in server[0] else "")
        try:
            return await protocol.query(server, [dns.Query(name, qtype, dns.IN)], timeout)
        finally:
            port.stopListening()

    async def validates(self) -> bool:
        """Whether the resolver validates: the root zone is signed, so its SOA comes back with AD."""
        try:
            return (await self.query("", dns.SOA)).secure
        except TemporaryDNSError:
            return False
