"""Tests for mailgate.testing: the fakes plugin authors test their plugins with."""

from __future__ import annotations

import doctest
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

import mailgate.testing.routing
from mailgate import PermanentFailure, TemporaryFailure, hookimpl
from mailgate.config import parse_config
from mailgate.core.session import Envelope
from mailgate.testing import RecordingSink, as_config, route_message, route_message_async

LOCAL = {"domains": {"local": ["example.test"]}}


class RouteTo:
    """A plugin routing one domain to `route`, answering the way `kind` says."""

    def __init__(self, domain: str, route: str, kind: str = "plain") -> None:
        self.domain, self.route, self.kind = domain, route, kind

    @hookimpl
    def mailgate_route(self, recipient: str, envelope: Envelope) -> Any:
        answer = self.route if recipient.endswith("@" + self.domain) else None
        if self.kind == "coroutine":
            return _later(answer)
        if self.kind == "deferred":
            return succeed(answer)
        if self.kind == "pending":
            return Deferred()
        return answer


async def _later(value: Any) -> Any:
    return value


def test_recording_sink_docstring_examples() -> None:
    failures, tried = doctest.testmod(mailgate.testing.routing, verbose=False)
    assert tried > 0 and failures == 0


def test_routes_and_refusals_per_recipient_as_the_session_answers() -> None:
    result = route_message(
        [RouteTo("crm.test", "sink:tickets")],
        {**LOCAL, "relay": {"transport": {"legacy.test": "smtp:127.0.0.1:2626"}}},
        "Alice@Example.TEST",
        ["b@legacy.test", "Nobody@example.test", "x@crm.test", "far@remote.test", "not an address"],
    )
    assert result.envelope.mail_from == "alice@example.test"
    assert result.routes == {"b@legacy.test": "smtp:127.0.0.1:2626", "x@crm.test": "sink:tickets"}
    assert result.accepted == ["b@legacy.test", "x@crm.test"]
    assert result.replies["b@legacy.test"] == "250 2.1.5 Ok"
    assert result.replies["nobody@example.test"].startswith("550 5.1.1")
    assert result.replies["far@remote.test"].startswith("554 5.7.1")  # no open relay
    assert result.refused["not an address"].code == 501
    assert result.deliveries == []


def test_relaying_needs_may_relay_or_authentication() -> None:
    assert route_message([], LOCAL, "a@example.test", ["far@remote.test"], may_relay=True).routes == {
        "far@remote.test": "mx"
    }
    result = route_message([], LOCAL, "a@example.test", ["far@remote.test"], authenticated_as="a@example.test")
    assert result.envelope.may_relay and result.routes == {"far@remote.test": "mx"}


def test_test_plugins_are_asked_before_the_built_ins() -> None:
    config = {"relay": {"transport": {"legacy.test": "smtp:127.0.0.1:2626"}}}
    result = route_message([RouteTo("legacy.test", "reject:550 5.7.1 closed")], config, "", ["b@legacy.test"])
    assert result.replies == {"b@legacy.test": "550 5.7.1 closed"}


def test_forwarding_is_resolved_like_the_session_does() -> None:
    config = {**LOCAL, "forward": [{"match": "old@example.test", "to": ["new@legacy.test", "x@crm.test"]}],
              "relay": {"transport": {"legacy.test": "smtp:127.0.0.1:2626"}}}
    result = route_message([RouteTo("crm.test", "sink:t")], config, "a@example.test", ["old@example.test"])
    assert result.accepted == ["old@example.test"]
    assert result.routes == {"new@legacy.test": "smtp:127.0.0.1:2626", "x@crm.test": "sink:t"}


def test_deliver_sends_each_plugin_route_once_with_its_recipients() -> None:
    sink = RecordingSink("sink")
    result = route_message(
        [RouteTo("crm.test", "sink:tickets"), sink],
        {"relay": {"transport": {"legacy.test": "smtp:127.0.0.1:2626"}}},
        "a@example.test", ["x@crm.test", "y@crm.test", "b@legacy.test"],
        message="Subject: hi\n\nbody\n", deliver=True,
    )
    assert [(a.route, a.recipients, a.delivered, a.error) for a in result.deliveries] == [
        ("sink:tickets", ["x@crm.test", "y@crm.test"], True, None)
    ]
    [delivered] = sink.deliveries
    assert delivered.envelope.mail_from == "a@example.test"
    assert delivered.envelope.rcpt_to == ["x@crm.test", "y@crm.test"]
    assert sink.messages == [b"Subject: hi\r\n\r\nbody\r\n"]


def test_delivery_errors_are_recorded_and_unclaimed_routes_are_undelivered() -> None:
    failing = RecordingSink("bad", error=PermanentFailure("no such ticket queue"))
    retrying = RecordingSink("later", error=TemporaryFailure())
    plugins = [RouteTo("bad.test", "bad:x"), RouteTo("later.test", "later:x"), RouteTo("lost.test", "nobody:x"),
               failing, retrying]
    result = route_message(plugins, {}, "a@example.test", ["a@bad.test", "a@later.test", "a@lost.test"],
                           deliver=True)
    bad, later, lost = (result.attempt(route) for route in ("bad:x", "later:x", "nobody:x"))
    assert str(bad.error.reply) == "554 5.3.0 no such ticket queue" and not bad.delivered
    assert later.error.code == 451
    assert (lost.delivered, lost.error) == (False, None)


def test_inline_delivery_is_tried_first() -> None:
    class Inline:
        @hookimpl
        def mailgate_deliver_inline(self, route: str, envelope: Envelope, message: bytes) -> Any:
            return True if route == "sink:now" else None

    sink = RecordingSink()
    result = route_message([RouteTo("a.test", "sink:now"), RouteTo("b.test", "sink:later"), Inline(), sink],
                           {}, "", ["x@a.test", "x@b.test"], deliver=True)
    assert [(a.route, a.inline) for a in result.deliveries] == [("sink:now", True), ("sink:later", False)]
    assert [d.route for d in sink.deliveries] == ["sink:later"]


def test_plugin_crashes_propagate() -> None:
    class Crash:
        @hookimpl
        def mailgate_deliver(self, route: str, envelope: Envelope, message: bytes) -> Any:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        route_message([RouteTo("a.test", "x:y"), Crash()], {}, "", ["b@a.test"], deliver=True)


@pytest.mark.parametrize("kind", ["coroutine", "deferred"])
def test_async_answers_that_are_ready_work_without_a_reactor(kind: str) -> None:
    result = route_message([RouteTo("a.test", "sink:x", kind)], {}, "", ["b@a.test"])
    assert result.routes == {"b@a.test": "sink:x"}


def test_an_answer_waiting_on_the_reactor_asks_for_the_async_form() -> None:
    with pytest.raises(RuntimeError, match="route_message_async"):
        route_message([RouteTo("a.test", "sink:x", "pending")], {}, "", ["b@a.test"])


def test_config_may_be_a_gateway_config_or_a_dict_without_listeners() -> None:
    config = parse_config({"listen": [{"name": "x", "protocol": "smtp", "endpoint": "tcp:25"}], **LOCAL})
    assert as_config(config) is config
    assert as_config(LOCAL).domains.local == ("example.test",)
    assert as_config(None).listen[0].name == "test"


def test_plugin_settings_reach_mailgate_configure() -> None:
    seen = []

    class Configured:
        @hookimpl
        def mailgate_configure(self, config: Any) -> None:
            seen.append(config.plugin["mine"]["level"])

    route_message([Configured()], {"plugin": {"mine": {"level": 3}}})
    assert seen == [3]


class AsyncRoutingTests(TestCase):
    """route_message_async with the reactor running: slow plugins and the pipe gateway."""

    async def test_slow_plugin_answers_are_awaited(self) -> None:
        class Slow:
            @hookimpl
            def mailgate_route(self, recipient: str, envelope: Envelope) -> Deferred:
                return deferLater(reactor, 0.01, lambda: "sink:slow")

        result = await route_message_async([Slow()], {}, "", ["b@a.test"])
        self.assertEqual(result.routes, {"b@a.test": "sink:slow"})

    async def test_pipe_routes_are_delivered_by_the_built_in_gateway(self) -> None:
        config = {"pipe": {"ok": {"command": ["true"]}, "no": {"command": ["false"]}},
                  "relay": {"transport": {"ok.test": "pipe:ok", "no.test": "pipe:no"}}}
        result = await route_message_async([], config, "a@example.test", ["b@ok.test", "b@no.test"], deliver=True)
        self.assertTrue(result.attempt("pipe:ok").delivered)
        self.assertIsInstance(result.attempt("pipe:no").error, PermanentFailure)
