"""Per-destination shaping: connections at once, messages started per period, backing off on "too many".

A destination ("site", as KumoMTA calls it) is where connections go: the
set of MX hosts of a domain (domains sharing MX hosts share one site and
one budget), the smarthost, or one `smtp:` host. Each site counts its
connections, busy ones and those waiting in the connection cache, against
its concurrency: an attempt takes an idle session for its host if there is
one, else opens a new connection if there is room, else closes an idle
session of another of the site's hosts, else waits its turn. A `421`,
or a 4.7.x reply that says "too many" or "rate", halves the site's
concurrency (never below 1) and each quiet minute gives one back. Nothing a
site does touches another site.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any, Hashable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailgate.config import DestinationConfig, RelayConfig, SenderRate
from mailgate.core.reply import Reply

log = Logger()

THROTTLE_WORDS = ("too many", "rate", "throttl", "limit exceeded")
RECOVER_SECONDS = 60.0  # a quiet minute gives one connection back
HALVE_AT_MOST_EVERY_SECONDS = 5.0  # twenty sessions hearing 421 at once are one signal, not twenty


class Cache(Protocol):
    """What a site needs of the connection cache (mailgate.outbound.connection_cache)."""

    def take(self, key: Any) -> Any: ...

    def evict(self, site: Any) -> bool: ...


def is_throttle(reply: Reply) -> bool:
    """421 (the server closes), or 4.7.x naming a connection or rate limit (RFC 3463 4.7.0 / Gmail's 4.7.28)."""
    if reply.code == 421:
        return True
    text = reply.text.lower()
    return reply.code // 100 == 4 and (reply.enhanced or "").startswith("4.7.") and any(
        word in text for word in THROTTLE_WORDS)


class Site:
    """One destination's connection budget and message rate."""

    def __init__(self, name: str, config: DestinationConfig, clock: IReactorTime, cache: Cache) -> None:
        self.name, self._clock, self._cache = name, clock, cache
        self.configure(config)
        self.limit = self.concurrency
        self.busy = 0  # connections an attempt is using (or opening)
        self.idle = 0  # connections waiting in the cache for the next message
        self._waiting: deque[Deferred[None]] = deque()
        self._starts: deque[float] = deque()
        self._rate_waiting: deque[Deferred[None]] = deque()
        self._rate_timer: IDelayedCall | None = None
        self._recover_timer: IDelayedCall | None = None
        self._halved_at = -HALVE_AT_MOST_EVERY_SECONDS

    def configure(self, config: DestinationConfig) -> None:
        self.concurrency, self.rate = config.concurrency, config.rate

    # --- connections ---------------------------------------------------------

    async def acquire(self, key: Hashable) -> Any:
        """A connection for `key`: an idle cached session for it (returned), else room for a new
        one (None), waiting (oldest first) while the site is at its limit. `release` after."""
        while True:
            if not self._waiting or self._room():
                session = self._cache.take(key)
                if session is not None:
                    self.busy += 1
                    return session
                if self.busy + self.idle < self.limit or (self.idle and self._cache.evict(self)):
                    self.busy += 1
                    return None
            waiter: Deferred[None] = Deferred()
            self._waiting.append(waiter)
            await waiter

    def release(self) -> None:
        """The attempt is done with its connection (closed it, or parked it: `idle_added` first)."""
        self.busy -= 1
        self._wake()

    def idle_added(self) -> None:
        self.idle += 1

    def idle_removed(self, wake: bool = True) -> None:
        """A parked session left the cache: taken (wake=False), expired, evicted or found dead."""
        self.idle -= 1
        if wake:
            self._wake()

    def _room(self) -> bool:
        return self.busy + self.idle < self.limit or self.idle > 0

    def _wake(self) -> None:
        """Let waiters retry while one could proceed (room, or an idle session to take or evict)."""
        woken = 0
        while self._waiting and self._room() and woken < self.limit:
            woken += 1
            self._waiting.popleft().callback(None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # --- messages per period -------------------------------------------------

    async def message(self) -> None:
        """Wait until one more message may start under `rate` (none: at once)."""
        if self.rate is None:
            return
        if self._rate_waiting or not self._rate_allows():
            waiter: Deferred[None] = Deferred()
            self._rate_waiting.append(waiter)
            self._arm_rate()
            await waiter
            return
        self._starts.append(self._clock.seconds())

    def _rate_allows(self) -> bool:
        assert self.rate is not None
        now = self._clock.seconds()
        while self._starts and self._starts[0] <= now - self.rate.per_seconds:
            self._starts.popleft()
        return len(self._starts) < self.rate.messages

    def _arm_rate(self) -> None:
        if self._rate_timer is not None and self._rate_timer.active():
            return
        assert self.rate is not None
        delay = max(0.0, self._starts[0] + self.rate.per_seconds - self._clock.seconds()) if self._starts else 0.0
        self._rate_timer = self._clock.callLater(delay, self._rate_tick)

    def _rate_tick(self) -> None:
        while self._rate_waiting and self.rate is not None and self._rate_allows():
            self._starts.append(self._clock.seconds())
            self._rate_waiting.popleft().callback(None)
        if self._rate_waiting:
            self._arm_rate()

    # --- backing off ---------------------------------------------------------

    def heard(self, reply: Reply) -> None:
        """Every reply from this site's hosts: a "too many" one halves the limit."""
        if not is_throttle(reply):
            return
        now = self._clock.seconds()
        if now - self._halved_at < HALVE_AT_MOST_EVERY_SECONDS:
            return
        self._halved_at = now
        before, self.limit = self.limit, max(1, self.limit // 2)
        log.warn("destination {site}: {code} {text}: concurrency {before} -> {after}, recovering over minutes",
                 site=self.name, code=reply.code, text=reply.one_line, before=before, after=self.limit)
        self._arm_recovery()

    def _arm_recovery(self) -> None:
        if self._recover_timer is not None and self._recover_timer.active():
            self._recover_timer.reset(RECOVER_SECONDS)
            return
        self._recover_timer = self._clock.callLater(RECOVER_SECONDS, self._recover)

    def _recover(self) -> None:
        self.limit = min(self.concurrency, self.limit + 1)
        self._wake()
        if self.limit < self.concurrency:
            self._recover_timer = self._clock.callLater(RECOVER_SECONDS, self._recover)


class Sites:
    """Every destination met so far, by what makes it one (MX host set, smarthost, smtp: host)."""

    def __init__(self, relay: RelayConfig, clock: IReactorTime, cache: Cache) -> None:
        self._relay, self._clock, self._cache = relay, clock, cache
        self._sites: dict[Hashable, Site] = {}

    def site(self, key: Hashable, domain: str, name: str) -> Site:
        """The site for `key`; `domain`'s [relay.destination] table (or "*") sets its limits.

        Of several domains sharing a site, one with a table of its own wins
        over "*", so `[relay.destination."googlemail.com"]` also shapes
        gmail.com when both have the same MX hosts.
        """
        own = self._relay.destination.get(domain)
        site = self._sites.get(key)
        if site is None:
            site = self._sites[key] = Site(name, self._relay.destination_for(domain), self._clock, self._cache)
        elif own is not None and (site.concurrency, site.rate) != (own.concurrency, own.rate):
            site.configure(own)
            site.limit = own.concurrency
            site._wake()
        return site


def worker_share(relay: RelayConfig, workers: int) -> RelayConfig:
    """The destination limits one worker of `workers` keeps (server.workers > 1).

    Each worker delivers its own part of the queue over its own connections
    (mailgate.app.worker), so each takes its share of every destination's
    concurrency and rate, and the server as a whole stays within them. A
    worker needs one connection to make progress, so a destination allowed
    fewer connections than there are workers gets one per worker. Postfix
    has one queue manager per machine; asking another process for every
    connection would cost what the workers save.
    """
    if workers <= 1:
        return relay
    tables = {"*": relay.destination_for("*"), **relay.destination}
    return replace(relay, destination={name: _share(table, workers) for name, table in tables.items()})


def _share(table: DestinationConfig, workers: int) -> DestinationConfig:
    rate = table.rate
    if rate is not None:  # 30/minute over 2 workers is 15/minute each; 1/minute, one per 2 minutes each
        rate = (SenderRate(rate.messages // workers, rate.per_seconds) if rate.messages >= workers
                else SenderRate(1, rate.per_seconds * workers / rate.messages))
    return DestinationConfig(max(1, table.concurrency // workers), rate)
