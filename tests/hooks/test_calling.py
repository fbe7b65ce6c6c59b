"""Hooks: time limits per plugin, failing closed, validated refusals, events off the path."""

from __future__ import annotations

from typing import Any

import pytest
from pluggy import PluginManager
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailgate import PermanentFailure, hookimpl, hookspecs
from mailgate.core.reply import Reply
from mailgate.hooks.calling import HookFailed, Hooks

CASE = SynchronousTestCase()


def hooks_of(*plugins: object, clock: Clock | None = None) -> Hooks:
    manager = PluginManager("mailgate")
    manager.add_hookspecs(hookspecs)
    for index, plugin in enumerate(plugins):
        manager.register(plugin, name=f"plugin{index}")
    return Hooks(manager, clock or Clock(), timeout_seconds=30.0)


class Answer:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @hookimpl
    def mailgate_helo(self, session: Any, name: str) -> Any:
        return self.answer

    @hookimpl
    def mailgate_verify(self, address: str) -> Any:
        return self.answer


def test_a_plugin_that_raises_fails_closed_naming_itself() -> None:
    class Broken:
        @hookimpl
        def mailgate_verify(self, address: str) -> None:
            raise KeyError("bug")

    d = Deferred.fromCoroutine(hooks_of(Broken()).first("mailgate_verify", address="a@b.test"))
    failure = CASE.failureResultOf(d, HookFailed)
    assert failure.value.plugin == "plugin0" and "KeyError" in failure.value.problem


def test_a_plugin_that_does_not_answer_in_time_fails_and_is_cancelled() -> None:
    clock, cancelled = Clock(), []
    pending: Deferred[None] = Deferred(cancelled.append)
    hooks = hooks_of(Answer(pending), clock=clock)
    d = Deferred.fromCoroutine(hooks.first("mailgate_verify", address="a@b.test"))
    clock.advance(29)
    CASE.assertNoResult(d)
    clock.advance(1)
    assert "no answer within 30 s" in CASE.failureResultOf(d, HookFailed).value.problem
    assert cancelled == [pending]  # the plugin's own work was cancelled, not left running


def test_delivery_errors_are_answers_not_failures() -> None:
    class Refuses:
        @hookimpl
        def mailgate_verify(self, address: str) -> None:
            raise PermanentFailure("no")

    d = Deferred.fromCoroutine(hooks_of(Refuses()).first("mailgate_verify", address="a@b.test"))
    CASE.failureResultOf(d, PermanentFailure)


@pytest.mark.parametrize("answer, expected", [
    ("554 5.7.1 go away", Reply(554, "5.7.1", "go away")),
    ("421 try later", Reply(421, "4.7.1", "try later")),  # an enhanced code is added
    (Reply(550, "5.7.0", "no"), Reply(550, "5.7.0", "no")),
])
def test_refusals_are_parsed(answer: Any, expected: Reply) -> None:
    d = Deferred.fromCoroutine(hooks_of(Answer(answer)).refusal("mailgate_helo", session=None, name="x"))
    assert CASE.successResultOf(d) == expected


@pytest.mark.parametrize("answer", ["250 2.0.0 fine", "go away", 550, True])
def test_a_refusal_that_is_not_one_is_a_plugin_failure(answer: Any) -> None:
    """Never silently accepted: a 2xx or malformed reply fails closed (issue #16)."""
    d = Deferred.fromCoroutine(hooks_of(Answer(answer)).refusal("mailgate_helo", session=None, name="x"))
    CASE.failureResultOf(d, HookFailed)


def test_notify_calls_every_plugin_later_and_swallows_failures() -> None:
    heard: list[str] = []

    class Listener:
        def __init__(self, name: str) -> None:
            self.name = name

        @hookimpl
        def mailgate_event(self, event: dict[str, Any]) -> None:
            heard.append(self.name)
            raise RuntimeError("listener bug")

    clock = Clock()
    hooks = hooks_of(Listener("a"), Listener("b"), clock=clock)
    hooks.notify("mailgate_event", event={"type": "received"})
    assert heard == []  # not on the caller's path
    clock.advance(0)
    assert sorted(heard) == ["a", "b"]


def test_notify_costs_nothing_without_plugins() -> None:
    clock = Clock()
    hooks_of(clock=clock).notify("mailgate_event", event={})
    assert clock.getDelayedCalls() == []


def test_after_use_the_new_managers_plugins_answer() -> None:
    """A reload points the queue's Hooks at a new manager: no answer of the old plugins remains."""
    hooks = hooks_of(Answer("550 5.7.1 old"))
    assert CASE.successResultOf(Deferred.fromCoroutine(hooks.refusal("mailgate_verify", address="a@b.test"))) \
        == Reply(550, "5.7.1", "old")
    hooks.use(hooks_of(Answer("551 5.7.1 new")).manager, 30.0)
    assert CASE.successResultOf(Deferred.fromCoroutine(hooks.refusal("mailgate_verify", address="a@b.test"))) \
        == Reply(551, "5.7.1", "new")
