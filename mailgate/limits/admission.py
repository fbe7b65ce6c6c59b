"""Admission of new connections, one decision for the whole server: per address, per rate, in all.

Every listener (SMTP, submission, POP3) asks the same Admission, so the
limits hold for the server, not per port: 20 connections per address means
20 whatever the protocols. The counting itself is behind `ConnectionCounts`,
which this process keeps in memory (`LocalCounts`); a store shared by worker
processes or nodes can stand in for it.

Descriptors are the resource that really runs out: a process past
RLIMIT_NOFILE cannot accept, open a Maildir file or connect to a relay.
So the total is capped (`limits.max_connections`, by default RLIMIT_NOFILE
less a reserve of an eighth, at least 64), and a connection whose own
descriptor number is already within half the reserve of the limit is
refused whatever the count says: Linux gives out the lowest free number, so
that many descriptors are open, whoever holds them.

A refused connection holds its descriptor until Twisted has closed it, on a
later reactor turn, and Twisted accepts up to a hundred connections or more
in one turn: a flood could still run the process out of descriptors with
refusals alone. Past a quarter of the reserve more (`saturated`), a new
connection is therefore closed at once without a word (AdmissionGate), as
Twisted itself would do on EMFILE, but before any descriptor runs out.
"""

from __future__ import annotations

import enum
import resource
from collections import Counter
from typing import Any, Protocol

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet import protocol

from mailgate.config import LimitsConfig
from mailgate.limits.rate import RateLimiter

MIN_DESCRIPTOR_RESERVE = 64


class Refusal(enum.Enum):
    """Why a connection is refused; each protocol words it its own way."""

    PER_IP = "too many connections from this address"
    RATE = "connecting too fast"
    FULL = "too many connections in all"


class ConnectionCounts(Protocol):
    """Open connections, counted per client address and in all."""

    def opened(self, ip: str) -> tuple[int, int]:
        """Count one more connection from `ip`; the counts (from ip, in all) with it."""

    def closed(self, ip: str) -> None:
        """Count one connection from `ip` fewer."""

    def total(self) -> int:
        """Connections open now, from every address."""


class LocalCounts:
    """ConnectionCounts for one process."""

    def __init__(self) -> None:
        self._per_ip: Counter[str] = Counter()
        self._total = 0

    def opened(self, ip: str) -> tuple[int, int]:
        self._per_ip[ip] += 1
        self._total += 1
        return self._per_ip[ip], self._total

    def total(self) -> int:
        return self._total

    def closed(self, ip: str) -> None:
        self._total -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]


def descriptor_limit() -> int:
    """This process's soft RLIMIT_NOFILE (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def descriptor_reserve(limit: int) -> int:
    """Descriptors kept for everything but client connections: files, the queue, relays, DNS."""
    return max(MIN_DESCRIPTOR_RESERVE, limit // 8)


class Admission:
    """Admit or refuse each new connection; every connection that entered must leave once.

    A refused connection is counted too until it has gone: it holds a
    descriptor while it hears its refusal.
    """

    def __init__(self, limits: LimitsConfig, clock: IReactorTime, *, counts: ConnectionCounts | None = None,
                 descriptors: int | None = None) -> None:
        self._per_ip_limit = limits.max_connections_per_ip
        self._rate = RateLimiter(limits.connection_rate, clock)
        self._counts = counts if counts is not None else LocalCounts()
        self.descriptors = descriptors if descriptors is not None else descriptor_limit()
        reserve = descriptor_reserve(self.descriptors)
        self.max_connections = limits.max_connections or max(1, self.descriptors - reserve)
        self._last_descriptor = self.descriptors - reserve // 2  # numbers from here on: refused
        self._saturation = min(self.max_connections, self.descriptors - reserve) + reserve // 4

    def enter(self, ip: str, descriptor: int | None = None) -> Refusal | None:
        """Count a new connection from `ip` (its socket's descriptor number, if known); None admits it."""
        from_ip, total = self._counts.opened(ip)
        if total > self.max_connections or (descriptor is not None and descriptor >= self._last_descriptor):
            return Refusal.FULL
        if from_ip > self._per_ip_limit:
            return Refusal.PER_IP
        if self._rate.take(ip):
            return Refusal.RATE
        return None

    def leave(self, ip: str) -> None:
        self._counts.closed(ip)

    def saturated(self) -> bool:
        """So many connections open, refused ones included, that a new one is not even answered."""
        return self._counts.total() >= self._saturation


class AdmissionGate(protocol.Factory[Any]):
    """A listener's outermost factory: no protocol at all (Twisted closes the socket at once) while
    the server's Admission is saturated; otherwise the wrapped factory's."""

    noisy = False

    def __init__(self, wrapped: protocol.Factory[Any], admission: Admission) -> None:
        self.wrapped = wrapped
        self.admission = admission

    def buildProtocol(self, addr: IAddress | None) -> Any | None:
        if self.admission.saturated():
            return None
        return self.wrapped.buildProtocol(addr)

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()
