"""Typed views of the Twisted interfaces mailgate calls methods on.

Twisted declares IReactorTime, IDelayedCall, ITransport ... as zope
interfaces, whose methods have no `self`; without the mypy-zope plugin
mypy reads every call through them as an error. Public signatures keep the
Twisted interface; code that calls the object holds it as one of these
views, taken once with `clock_view` or `connection_view`. Any object that
provides the interface fits its view; zope checks that only at run time,
which is why taking the view is a cast.

(The pop3-accounts branch adds this module too, with the same Clock and
DelayedCall and a Connection that also has the producer methods: a merge
keeps the union.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from twisted.internet.interfaces import IAddress, IReactorTime, ITransport


class DelayedCall(Protocol):
    """IDelayedCall: a scheduled call that can be moved or cancelled."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsFromNow: float) -> None: ...


class Clock(Protocol):
    """IReactorTime: the time and the scheduling of later calls."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], /, *args: object) -> DelayedCall: ...


class Connection(Protocol):
    """ITransport, and ITLSTransport's startTLS, which only a STARTTLS listener's transport is asked for."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def startTLS(self, contextFactory: object) -> None: ...


def clock_view(clock: IReactorTime) -> Clock:
    return cast(Clock, clock)


def connection_view(transport: ITransport) -> Connection:
    return cast(Connection, transport)
