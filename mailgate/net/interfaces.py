"""Typed views of the Twisted interfaces that mailgate calls methods on.

Twisted declares IReactorTime, IDelayedCall, ITransport ... as zope
interfaces, whose methods have no `self`; mypy without the mypy-zope plugin
reads every call through them as an error. Public signatures keep the
Twisted interface; code keeps the object as one of these views to call it.
Any object providing the interface fits the view (checked only at run time,
as zope interfaces are).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.python.threadpool import ThreadPool


class DelayedCall(Protocol):
    """IDelayedCall: a scheduled call that can be moved or cancelled."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsFromNow: float) -> None: ...


class Clock(Protocol):
    """IReactorTime: the time and the scheduling of later calls."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], /, *args: object) -> DelayedCall: ...


class ThreadPoolOwner(Protocol):
    """IReactorThreads, the part that hands out the reactor's thread pool."""

    def getThreadPool(self) -> ThreadPool: ...


class Connection(Protocol):
    """ITransport plus the IProducer and IConsumer parts a TCP or TLS transport has."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def getPeer(self) -> object: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...
