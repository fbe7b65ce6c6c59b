"""Blocking work of the built-ins (signing, verifying) in the reactor's thread pool, never on the reactor.

`in_threads(reactor)` gives a function that runs `f(*args)` in the pool
`mailgate_configure`'s reactor owns (mailgate.accounts.cred's
`thread_runner`, as for password checks), firing a Deferred on the reactor
with its result. A test clock (mailgate.testing's task.Clock) has no pool:
the work then runs at once, in the caller's thread, so tests stay
synchronous.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import maybeDeferred

from mailgate.accounts.cred import BlockingRunner, thread_runner

InThreads = BlockingRunner


def in_threads(reactor: Any) -> InThreads:
    if getattr(reactor, "getThreadPool", None) is None:
        return maybeDeferred
    return thread_runner(reactor)
