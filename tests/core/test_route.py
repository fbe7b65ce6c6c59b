"""Route: every route string is parsed once, here, and is still the string."""

from __future__ import annotations

import json

import pytest

from mailgate.core.reply import Reply
from mailgate.core.route import DISCARD, LOCAL, MX, Route, RouteError, host_port


@pytest.mark.parametrize("text, scheme, argument", [
    ("local", "local", ""), ("local:alice@example.test", "local", "alice@example.test"),
    ("mx", "mx", ""), ("discard", "discard", ""), ("smtp:127.0.0.1:2626", "smtp", "127.0.0.1:2626"),
    ("webhook:tickets", "webhook", "tickets"), ("crm:queue:support", "crm", "queue:support"),
    ("list:team@example.test", "list", "team@example.test"),
])
def test_parse(text: str, scheme: str, argument: str) -> None:
    route = Route(text)
    assert (route.scheme, route.argument, route) == (scheme, argument, text)


@pytest.mark.parametrize("text", [
    "", "nothing", "mx:x", "discard:x", "Local", "9x:y", "smtp:host", "smtp:host:99999",
    "reject:250 2.0.0 fine", "reject:nonsense", "local:a/b@example.test", "local:", "list:",
])
def test_refused(text: str) -> None:
    with pytest.raises(RouteError):
        Route(text)


def test_a_route_is_its_string() -> None:
    """Hooks and the spool see the contract's strings (SPEC: route is a str)."""
    assert isinstance(MX, str) and json.dumps({"r": Route("webhook:x")}) == '{"r": "webhook:x"}'
    assert {Route("local"): 1}["local"] == 1 and Route(Route("mx")) is not None
    assert [LOCAL.scheme, DISCARD.scheme] == ["local", "discard"]


def test_reject_routes_give_their_reply() -> None:
    assert Route("reject:550 5.7.1 not here").refusal() == Reply(550, "5.7.1", "not here")
    assert Route("reject:450 try later").refusal() == Reply(450, "4.7.1", "try later")  # an enhanced code added


def test_host_port() -> None:
    assert Route("smtp:[::1]:25").host_port() == ("::1", 25)
    assert host_port("relay.example.test:587") == ("relay.example.test", 587)
    assert Route("local:alice@example.test").mailbox("x@y.test") == "alice@example.test"
    assert LOCAL.mailbox("x@y.test") == "x@y.test"
