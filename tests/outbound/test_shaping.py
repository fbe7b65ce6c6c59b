"""Destinations' budgets on a Clock: concurrency, idle sessions, rate, and backing off on 421."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mailgate.config import DestinationConfig, RelayConfig, SenderRate
from mailgate.core.reply import Reply
from mailgate.outbound.shaping import RECOVER_SECONDS, Site, Sites, is_throttle, worker_share


class FakeCache:
    def __init__(self) -> None:
        self.idle: dict[Any, list[Any]] = {}
        self.evicted = 0

    def take(self, key: Any) -> Any:
        return self.idle.get(key, []).pop() if self.idle.get(key) else None

    def evict(self, site: Any) -> bool:
        for sessions in self.idle.values():
            if sessions:
                sessions.pop()
                site.idle_removed(wake=False)
                self.evicted += 1
                return True
        return False


def start(site: Site, key: str = "k") -> list:
    got: list = []
    Deferred.fromCoroutine(site.acquire(key)).addCallback(got.append)
    return got


def test_concurrency_then_waiting_oldest_first() -> None:
    site = Site("d", DestinationConfig(concurrency=2), Clock(), FakeCache())
    first, second, third, fourth = start(site), start(site), start(site), start(site)
    assert (first, second, third, fourth) == ([None], [None], [], [])
    site.release()
    assert (third, fourth) == ([None], [])
    assert site.busy == 2


def test_an_idle_session_is_reused_or_evicted_for_room() -> None:
    cache = FakeCache()
    site = Site("d", DestinationConfig(concurrency=1), Clock(), cache)
    assert start(site) == [None]
    cache.idle["k"] = ["session"]
    site.idle_added()
    site.release()  # parked: busy 0, idle 1
    assert start(site, "k") == ["session"]  # the same host: the session itself
    cache.idle["other"] = ["old"]
    site.idle_added()
    site.release()
    assert start(site, "k") == [None] and cache.evicted == 1  # another host: closed to make room


def test_rate_spaces_message_starts() -> None:
    clock = Clock()
    site = Site("d", DestinationConfig(rate=SenderRate(2, 60.0)), clock, FakeCache())
    started: list = []
    for n in range(3):
        Deferred.fromCoroutine(site.message()).addCallback(lambda _, n=n: started.append(n))
    assert started == [0, 1]
    clock.advance(59)
    assert started == [0, 1]
    clock.advance(1)
    assert started == [0, 1, 2]


def test_421_halves_recovers_and_stays_with_its_site() -> None:
    clock = Clock()
    sites = Sites(RelayConfig(), clock, FakeCache())
    busy, other = sites.site("a", "busy.test", "busy"), sites.site("b", "fine.test", "fine")
    busy.heard(Reply(421, "4.7.0", "too many connections"))
    busy.heard(Reply(421, "4.7.0", "too many connections"))  # the same burst: once
    assert (busy.limit, other.limit) == (10, 20)
    clock.advance(RECOVER_SECONDS)
    assert busy.limit == 11
    clock.pump([RECOVER_SECONDS] * 20)
    assert busy.limit == 20


def test_what_counts_as_too_many() -> None:
    assert is_throttle(Reply(421, "4.3.2", "shutting down"))
    assert is_throttle(Reply(451, "4.7.28", "rate limited, try later"))
    assert not is_throttle(Reply(451, "4.7.1", "greylisted"))
    assert not is_throttle(Reply(450, "4.2.1", "too many messages in mailbox"))


def test_domains_sharing_a_site_share_the_table_that_names_one() -> None:
    relay = RelayConfig(destination={"googlemail.test": DestinationConfig(concurrency=3)})
    sites = Sites(relay, Clock(), FakeCache())
    first = sites.site(("mx", ("mx.google.test",)), "gmail.test", "g")
    assert first.concurrency == 20
    second = sites.site(("mx", ("mx.google.test",)), "googlemail.test", "g")
    assert second is first and first.limit == 3


def test_each_worker_takes_its_share_of_every_destination_and_the_server_stays_within_them() -> None:
    relay = RelayConfig(destination={
        "*": DestinationConfig(concurrency=20),
        "slow.example": DestinationConfig(concurrency=3, rate=SenderRate(30, 60.0)),
        "rare.example": DestinationConfig(concurrency=1, rate=SenderRate(1, 60.0)),
    })
    for workers in (2, 3):
        share = worker_share(relay, workers)
        for name, table in relay.destination.items():
            mine = share.destination[name]
            assert mine.concurrency * workers <= max(table.concurrency, workers)  # one each at least
            assert mine.concurrency >= 1
            assert (mine.rate is None) == (table.rate is None)
            if table.rate is not None and mine.rate is not None:
                per_second = mine.rate.messages / mine.rate.per_seconds * workers
                assert per_second <= table.rate.messages / table.rate.per_seconds + 1e-9
                assert mine.rate.messages >= 1
    assert worker_share(relay, 2).destination["slow.example"] == DestinationConfig(1, SenderRate(15, 60.0))
    assert worker_share(relay, 2).destination["rare.example"] == DestinationConfig(1, SenderRate(1, 120.0))
    assert worker_share(RelayConfig(), 2).destination_for("any.example") == DestinationConfig(concurrency=10)
    assert worker_share(relay, 1) is relay


def test_a_worker_s_share_is_what_its_sites_hold_to() -> None:
    sites = Sites(worker_share(RelayConfig(destination={"*": DestinationConfig(concurrency=4)}), 2), Clock(),
                  FakeCache())
    site = sites.site(("mx", ("mx.example",)), "example", "example")
    assert site.concurrency == site.limit == 2
