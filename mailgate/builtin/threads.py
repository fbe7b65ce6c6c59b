"""Blocking work of the built-ins (signing, verifying) in the reactor's thread pool, never on the reactor.

`in_threads(reactor)` gives a function that runs `f(*args)` in the pool
`mailgate_configure`'s reactor owns (`deferToThreadPool(reactor,
reactor.getThreadPool(), ...)`), firing a Deferred on the reactor with its
result. A test clock (mailgate.testing's task.Clock) has no pool: the
work then runs at once, in the caller's thread, so tests stay synchronous.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool

InThreads = Callable[..., Deferred[Any]]


def in_threads(reactor: Any) -> InThreads:
    pool = getattr(reactor, "getThreadPool", None)
    if pool is None:
        return maybeDeferred

    def run(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, pool(), function, *args)
    return run
