"""Pools: which pool a message uses (plugin first, then senders patterns) and the order of source addresses."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mailgate import hookimpl
from mailgate.builtin import load_plugins
from mailgate.config import PoolConfig, parse_config
from mailgate.core.session import Envelope
from mailgate.hooks.calling import HookFailed, Hooks
from mailgate.outbound.pools import Pools

NEWS = PoolConfig("news", ("127.0.0.10", "127.0.0.11", "::10"), "news-mta.example.test", ("*@news.example.test",))
BULK = PoolConfig("bulk", ("127.0.0.12",), "", ("boss@example.test",))
CONFIG = parse_config({"listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}]})


def choose(pools: Pools, sender: str) -> str | None:
    d = Deferred.fromCoroutine(pools.choose(Envelope(mail_from=sender, rcpt_to=["x@remote.test"])))
    results: list = []
    d.addBoth(results.append)
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0].name if results[0] is not None else None


def hooks_with(*plugins: object) -> Hooks:
    return Hooks(load_plugins(CONFIG, plugins), Clock())


def test_senders_patterns_choose_the_pool() -> None:
    pools = Pools((NEWS, BULK), "mx.example.test")
    assert choose(pools, "letters@News.Example.Test") == "news"
    assert choose(pools, "boss@example.test") == "bulk"
    assert choose(pools, "alice@example.test") is None


def test_addresses_are_used_in_turn_by_family_and_helo_defaults_to_the_hostname() -> None:
    news, bulk = Pools((NEWS, BULK), "mx.example.test")._pools.values()
    assert [news.sources(False)[0] for _ in range(3)] == ["127.0.0.10", "127.0.0.11", "127.0.0.10"]
    assert news.sources(False) == ["127.0.0.11", "127.0.0.10"]  # the others follow, as fallbacks
    assert news.sources(True) == ["::10"]
    assert bulk.sources(True) == []
    assert (news.helo, bulk.helo) == ("news-mta.example.test", "mx.example.test")


class Chooser:
    @hookimpl
    def mailgate_pool(self, envelope: Envelope) -> str | None:
        return {"alice@example.test": "bulk", "eve@example.test": "nonexistent"}.get(envelope.mail_from)


class Broken:
    @hookimpl
    def mailgate_pool(self, envelope: Envelope) -> str | None:
        raise RuntimeError("database down")


def test_a_plugin_answer_wins_over_the_patterns() -> None:
    pools = Pools((NEWS, BULK), "mx.example.test", hooks_with(Chooser()))
    assert choose(pools, "alice@example.test") == "bulk"
    assert choose(pools, "eve@example.test") is None  # an unknown name is logged, the patterns decide
    assert choose(pools, "x@news.example.test") == "news"


def test_a_failing_plugin_fails_closed() -> None:
    pools = Pools((NEWS,), "mx.example.test", hooks_with(Broken()))
    with pytest.raises(HookFailed):
        choose(pools, "x@news.example.test")
