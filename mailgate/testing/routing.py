"""Fakes for plugin authors: a recording delivery sink, and routing a message without sockets.

A plugin test in three lines: build the plugins and configuration the server
would, ask where each recipient goes, and (optionally) deliver::

    import my_plugin
    from mailgate.testing import RecordingSink, route_message

    def test_support_mail_goes_to_the_crm() -> None:
        sink = RecordingSink("crm")
        result = route_message(
            [my_plugin, sink],
            {"domains": {"local": ["example.test"]}, "plugin": {"my_plugin": {"queue": "support"}}},
            "alice@example.test", ["support@example.test", "nobody@example.test"],
            deliver=True,
        )
        assert result.routes == {"support@example.test": "crm:support"}
        assert result.replies["nobody@example.test"].startswith("550 5.1.1")
        assert sink.deliveries[0].envelope.rcpt_to == ["support@example.test"]

Plugins can also load the way a user's do, from the configuration:
`{"plugins": {"paths": ["plugins"], "enable": ["my_plugin"]}}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailgate import hookimpl
from mailgate.config import GatewayConfig, parse_config
from mailgate.core.addresses import AddressError, normalize_mailbox
from mailgate.core.errors import DeliveryError
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.core.session import Envelope, Session
from mailgate.hooks.calling import Hooks
from mailgate.builtin import load_plugins
from mailgate.inbound.routing import accept_recipient
from mailgate.inbound.transaction import Deliverer
from mailgate.outbound.transport import DeliveryJob, HookTransport
from mailgate.store.maildir_writer import StoredMessage
from mailgate.testing.memory import MemoryStore

DEFAULT_MESSAGE = (
    b"From: sender@example.test\r\nTo: recipient@example.test\r\n"
    b"Subject: mailgate.testing\r\n\r\nHello.\r\n"
)
DEFAULT_LISTEN = {"name": "test", "protocol": "smtp", "endpoint": "tcp:0:interface=127.0.0.1"}
# Routes the server delivers itself (Maildirs, the MX relay, list expansion);
# every other route goes to `mailgate_deliver`, as the outbound queue does.
SERVER_SCHEMES = frozenset({"local", "discard", "list", "mx", "smtp"})

ConfigLike = Union[GatewayConfig, Mapping[str, Any], None]


@dataclass
class Delivered:
    """One `mailgate_deliver` call a RecordingSink answered."""

    route: str
    envelope: Envelope
    message: bytes


class RecordingSink:
    """A plugin that takes every route of one scheme and records it.

    `RecordingSink("crm")` answers `mailgate_deliver` for `crm:ANYTHING`
    routes with True (or raises `error`, e.g. `TemporaryFailure()`, to test
    retries and bounces) and returns None for every other scheme::

        >>> from mailgate.core.session import Envelope
        >>> sink = RecordingSink("crm")
        >>> sink.mailgate_deliver("crm:tickets", Envelope("a@x.test", ["b@y.test"]), b"Subject: hi\\r\\n\\r\\n")
        True
        >>> sink.mailgate_deliver("mx", Envelope(), b"") is None
        True
        >>> [d.route for d in sink.deliveries]
        ['crm:tickets']
    """

    def __init__(self, scheme: str = "sink", error: Exception | None = None) -> None:
        self.scheme = scheme
        self.error = error
        self.deliveries: list[Delivered] = []

    @hookimpl
    def mailgate_deliver(self, route: str, envelope: Envelope, message: bytes) -> bool | None:
        if route.partition(":")[0] != self.scheme:
            return None
        self.deliveries.append(Delivered(route, replace(envelope, rcpt_to=list(envelope.rcpt_to)), message))
        if self.error is not None:
            raise self.error
        return True

    @property
    def messages(self) -> list[bytes]:
        return [delivered.message for delivered in self.deliveries]


@dataclass
class DeliveryAttempt:
    """What happened to one route when `deliver=True`: one call per route, all its recipients."""

    route: str
    recipients: list[str]
    delivered: bool  # some plugin answered True
    inline: bool = False  # by `mailgate_deliver_inline` (at DATA) rather than `mailgate_deliver`
    error: DeliveryError | None = None  # TemporaryFailure: retried; PermanentFailure: bounced


@dataclass
class RoutingResult:
    """Per-recipient answers, as the SMTP client would have heard them.

    `replies` maps each RCPT TO address (lower-cased, as the server does) to
    its reply line ("250 2.1.5 Ok", "550 5.1.1 ..."); `routes` maps each
    delivery address to its route (forwarding may turn one recipient into
    several); `refused` holds the refusals; `deliveries` the delivery attempts.
    """

    envelope: Envelope
    replies: dict[str, str] = field(default_factory=dict)
    refused: dict[str, Reply] = field(default_factory=dict)
    deliveries: list[DeliveryAttempt] = field(default_factory=list)

    @property
    def routes(self) -> dict[str, str]:
        return dict(self.envelope.routes)

    @property
    def accepted(self) -> list[str]:
        return list(self.envelope.rcpt_to)

    def attempt(self, route: str) -> DeliveryAttempt | None:
        return next((a for a in self.deliveries if a.route == route), None)


def as_config(config: ConfigLike) -> GatewayConfig:
    """A GatewayConfig from a TOML-shaped dict (validated as the file would be).

    A listener is added when the dict has none, so a test names only what it
    is about: `as_config({"relay": {"transport": {"x.test": "crm:x"}}})`.
    """
    if isinstance(config, GatewayConfig):
        return config
    data = dict(config or {})
    data.setdefault("listen", [DEFAULT_LISTEN])
    return parse_config(data, source="<mailgate.testing>")


def route_message(
    plugins: Iterable[object] = (),
    config: ConfigLike = None,
    mail_from: str = "",
    rcpt_to: Sequence[str] = (),
    message: bytes | str = DEFAULT_MESSAGE,
    **options: Any,
) -> RoutingResult:
    """Route (and with `deliver=True`, deliver) one message; no sockets, no reactor.

    For plugins that answer at once: plain values, coroutines, or Deferreds
    already fired. A plugin still waiting on the reactor (a process, an HTTP
    call) needs `await route_message_async(...)` in a trial TestCase instead.
    Options are those of `route_message_async`. Example::

        result = route_message([], {"relay": {"transport": {"legacy.test": "smtp:127.0.0.1:2626"}}},
                               "a@example.test", ["b@legacy.test"])
        assert result.routes == {"b@legacy.test": "smtp:127.0.0.1:2626"}
    """
    outcome: list[Any] = []
    running = Deferred.fromCoroutine(route_message_async(plugins, config, mail_from, rcpt_to, message, **options))
    running.addBoth(outcome.append)
    if not outcome:
        running.cancel()
        raise RuntimeError("a plugin is waiting on the reactor: use `await route_message_async(...)` "
                           "in a twisted.trial TestCase")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


async def route_message_async(
    plugins: Iterable[object] = (),
    config: ConfigLike = None,
    mail_from: str = "",
    rcpt_to: Sequence[str] = (),
    message: bytes | str = DEFAULT_MESSAGE,
    *,
    deliver: bool = False,
    may_relay: bool = False,
    authenticated_as: str | None = None,
    client_ip: str = "127.0.0.1",
) -> RoutingResult:
    """What the server does for one transaction, minus the sockets and the disk.

    Builds the plugin manager as start-up does (built-ins, entry points,
    `plugins.enable` from `config`, then `plugins`, asked first), awaits
    every `mailgate_configure`, and resolves each recipient with the code
    the SMTP session runs at RCPT TO (`mailgate_forward`, then
    `mailgate_route`). `may_relay` stands for a client in
    `relay.allowed_networks`; `authenticated_as` for a session after AUTH.

    With `deliver=True`, each accepted route that is not the server's own
    (local, discard, list, mx, smtp) is offered once, with all its
    recipients, to `mailgate_deliver_inline` and then, if no plugin took it
    there, to `mailgate_deliver`, as the queue would. `message` gets CRLF
    line ends; the server would also have put its Received: line on top.
    DeliveryErrors are recorded in `deliveries`; any other exception a
    plugin raises propagates, so a bug shows as a traceback.
    """
    gateway_config = as_config(config)
    clock = Clock()
    hooks = Hooks(load_plugins(gateway_config, extra=plugins), clock, propagate_errors=True)
    await hooks.each("mailgate_configure", config=gateway_config, reactor=clock)
    session = Session(peer=client_ip, helo="client.example.test", user=authenticated_as,
                      listener=DEFAULT_LISTEN["name"])
    envelope = Envelope(mail_from=normalize_mailbox(mail_from) if mail_from else "", session=session,
                        may_relay=may_relay or authenticated_as is not None)
    result = RoutingResult(envelope)
    for address in rcpt_to:
        await _rcpt(hooks, result, address)
    if deliver:
        result.deliveries = await _deliver(hooks, envelope, _crlf(message))
    return result


async def _rcpt(hooks: Hooks, result: RoutingResult, address: str) -> None:
    """One RCPT TO, answered by the code the SMTP session runs."""
    try:
        recipient = normalize_mailbox(address)
    except AddressError as exc:
        result.refused[address] = Reply(501, "5.1.3", str(exc))
        result.replies[address] = str(result.refused[address])
        return
    reply = await accept_recipient(hooks, result.envelope, recipient)
    if not reply.positive:
        result.refused[recipient] = reply
    result.replies[recipient] = str(reply)


async def _deliver(hooks: Hooks, envelope: Envelope, message: bytes) -> list[DeliveryAttempt]:
    """The server's delivery transaction (inline gateways at DATA), then each queued
    route offered to `mailgate_deliver` the way the queue's plugin transport does."""
    kept = MemoryStore()
    stored = StoredMessage.build(b"", [message.replace(b"\r\n", b"\n")], len(message), message.count(b"\n"))
    by_route = _plugin_routes(envelope)
    try:
        await Deliverer(kept, kept, hooks).deliver(envelope, stored, "TEST")
    except DeliveryError as exc:
        return [DeliveryAttempt(route, recipients, False, inline=True, error=exc) for route, recipients in by_route.items()]
    queued = {route for _, _, recipients, _ in kept.entries for _, route in recipients}
    transport = HookTransport(hooks, lambda job: succeed(message))
    attempts = []
    for route, recipients in by_route.items():
        if route in queued:
            attempts.append(await _queued_attempt(transport, envelope, route, recipients))
        else:
            attempts.append(DeliveryAttempt(route, recipients, True, inline=True))
    return attempts


def _plugin_routes(envelope: Envelope) -> dict[Route, list[str]]:
    """Recipients by route, for the routes the server does not deliver itself."""
    by_route: dict[Route, list[str]] = {}
    for recipient, route in envelope.routes.items():
        if route.scheme not in SERVER_SCHEMES:
            by_route.setdefault(route, []).append(recipient)
    return by_route


async def _queued_attempt(transport: HookTransport, envelope: Envelope, route: Route,
                          recipients: list[str]) -> DeliveryAttempt:
    job = DeliveryJob("TEST", Envelope(mail_from=envelope.mail_from, rcpt_to=list(recipients),
                                       session=envelope.session), route, route, "")
    [result, *_] = await transport.deliver(job)
    attempt = DeliveryAttempt(route, recipients, result.delivered)
    if result.reply.code == 451 and result.reply.enhanced == "4.3.5":  # no plugin took the route
        attempt.delivered = False
    elif not result.delivered:
        attempt.error = DeliveryError.from_reply(result.reply)
    return attempt


def _crlf(message: bytes | str) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    return re.sub(rb"\r?\n", b"\r\n", data)
