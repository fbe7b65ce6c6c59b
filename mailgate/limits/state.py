"""Where the limits' counters live: this process (the default), the master of the workers, or Redis.

A limit must hold for the whole server, or for every node sharing one
Redis: `max_connections_per_ip = 3` means three connections, not three per
worker process. The counting that crosses processes is behind `SharedState`,
which answers in one round trip per question (a Deferred); the in-process
Admission and RateLimiter stay as they are for a server of one process.

One SharedState serves a process, chosen at start-up before the plugins are
configured (`use`), so the built-in sender policy and every listener ask
the same one. Without one (`current()` is None) everything is local, as in
0.1.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from mailgate.config import SenderRate
from mailgate.limits.admission import Admission, Refusal
from mailgate.limits.rate import RateLimiter


class SharedState(Protocol):
    """Counters kept outside this process; every question is one round trip."""

    def enter(self, ip: str) -> Deferred[Refusal | None]:
        """Count a connection from `ip` against the shared per-address, rate and total limits."""

    def leave(self, ip: str) -> None:
        """The connection counted by `enter` has gone (no answer is waited for)."""

    def take(self, name: str, key: str) -> Deferred[float]:
        """Spend one token of the shared rate `name` ("sender") for `key`: 0.0 or seconds to wait."""

    def available(self) -> bool:
        """False while the store has been unreachable for longer than it may fail open."""


_current: SharedState | None = None


def use(state: SharedState | None) -> None:
    """Make `state` this process's SharedState (None: counters in this process)."""
    global _current
    _current = state


def current() -> SharedState | None:
    return _current


def shared_admission(local: Admission) -> Any:
    """The Admission the listeners use: `local`, or `local` plus the shared counts."""
    return local if _current is None else SharedAdmission(local, _current)


def shared_throttle(local: Any) -> Any:
    """The AuthThrottle the listeners use: `local`, or `local` kept in step with the other workers'."""
    share = getattr(_current, "share_throttle", None)
    return local if share is None else share(local)


def rate_limiter(name: str, rate: SenderRate | None, clock: IReactorTime) -> Any:
    """A RateLimiter for `rate`, local or shared under `name`: its `take(key)` answers a float
    or a Deferred firing with one."""
    if _current is None or rate is None:
        return RateLimiter(rate, clock)
    return SharedRate(name, _current)


class SharedRate:
    """A rate limit counted by the SharedState under one name."""

    def __init__(self, name: str, state: SharedState) -> None:
        self._name, self._state = name, state

    def take(self, key: str) -> Deferred[float]:
        return self._state.take(self._name, key)


class SharedAdmission:
    """This process's Admission for what is its own (descriptors, saturation), the shared
    state for the limits that hold for the whole server.

    Both count every connection, refused or not, and `leave` uncounts it in
    both: enter and leave always come in pairs, so the shared counts never
    drift however connections end. The local Admission is built with its
    per-address and rate limits as configured; being a subset of the shared
    counts, it never refuses a connection the shared ones would admit, and
    its own refusal (FULL: descriptors) wins.
    """

    def __init__(self, local: Admission, state: SharedState) -> None:
        self._local, self._state = local, state
        self.max_connections, self.descriptors = local.max_connections, local.descriptors

    def enter(self, ip: str, descriptor: int | None = None) -> Deferred[Refusal | None]:
        local = self._local.enter(ip, descriptor)
        return self._state.enter(ip).addCallback(lambda shared: local or shared)

    def leave(self, ip: str) -> None:
        self._local.leave(ip)
        self._state.leave(ip)

    def saturated(self) -> bool:
        return self._local.saturated()
