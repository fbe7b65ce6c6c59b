"""The interface the queue delivers through, and the transport for plugins' routes.

A transport takes queued recipients that share a destination and returns
one result per recipient; it never raises for a delivery problem. The
scheduler picks a transport by route scheme and knows nothing else about
SMTP, webhooks or programs, as chasquid's couriers work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable, Protocol

from twisted.logger import Logger

from mailgate.core.errors import DeliveryError
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.core.wire import CRLFConverter
from mailgate.hooks.calling import HookFailed, Hooks

log = Logger()


@dataclass(frozen=True)
class RecipientResult:
    """What happened to one recipient in one attempt."""

    recipient: str
    reply: Reply  # the server's, else a synthetic 4xx for connection/timeout/TLS problems
    remote_mta: str | None = None  # host that answered, None if none did
    maybe_delivered: bool = False  # the whole message went, its final reply never came
    reporting_mta: str | None = None  # the name we said in EHLO when not server.hostname (a pool's helo)
    # A NOTIFY=SUCCESS report's action (RFC 3464 2.3.3): "delivered" at the final destination,
    # "relayed" to a next hop without DSN, None when the next hop offers DSN and reports itself.
    success_action: str | None = "delivered"

    @property
    def delivered(self) -> bool:
        return self.reply.positive

    @property
    def permanent(self) -> bool:
        return self.reply.permanent

    @property
    def temporary(self) -> bool:
        """Anything neither delivered nor 5xx is retried: fail closed, never lose mail."""
        return not (self.delivered or self.permanent)


def same_result(recipients: list[str] | tuple[str, ...], reply: Reply,
                remote_mta: str | None = None) -> list[RecipientResult]:
    """One reply for every recipient (a connection that failed, a plugin's answer)."""
    return [RecipientResult(recipient, reply, remote_mta) for recipient in recipients]


@dataclass(frozen=True)
class DeliveryJob:
    """Recipients of one queued message that go to one destination in one delivery."""

    queue_id: str
    envelope: Envelope  # sender, these recipients, the sending session and parameters
    route: Route  # the route of the first recipient; all share its destination
    destination: Hashable  # what the transport's destination() said
    message_path: str  # the spooled message (LF line ends, no Return-Path)
    wire_size: int | None = None  # its CRLF octets, when the queue recorded them (SIZE=, RFC 1870)


class Transport(Protocol):
    """Delivers queued mail for some route schemes."""

    def destination(self, recipient: str, route: Route) -> Hashable:
        """Recipients with equal destinations are delivered together (one connection)."""
        ...

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        """One attempt; a result for every recipient of the job, never an exception."""
        ...


class HookTransport:
    """Routes whose scheme no built-in transport owns go to `mailgate_deliver`.

    Webhooks, the pipe gateway and plugins' own schemes deliver this way:
    once per message and route, with that route's pending recipients.
    `load_message` gives a job's message as plugins get it (CRLF bytes).
    A plugin that fails (raises anything but a DeliveryError, or times
    out) defers its mail: fail closed.
    """

    def __init__(self, hooks: Hooks, load_message: Callable[[DeliveryJob], Awaitable[bytes]]) -> None:
        self._hooks, self._load_message = hooks, load_message

    def destination(self, recipient: str, route: Route) -> Hashable:
        return route

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        recipients = job.envelope.rcpt_to
        message = await self._load_message(job)
        try:
            answer = await self._hooks.first("mailgate_deliver", route=job.route, envelope=job.envelope,
                                             message=message)
        except DeliveryError as exc:
            log.info("{id}: route {route}: {reply} ({reason})", id=job.queue_id, route=job.route,
                     reply=exc.reply, reason=exc.reason)
            return same_result(recipients, exc.reply)
        except HookFailed as failure:  # fail closed: a crashing plugin means "try later"
            return same_result(recipients, Reply(451, "4.3.0", f"plugin {failure.plugin} failed: {failure.problem}"))
        if answer is None:
            return same_result(recipients, Reply(451, "4.3.5", f"no plugin delivers route {job.route}"))
        return same_result(recipients, Reply(250, "2.0.0", "delivered by plugin"))


def read_wire_form(path: str) -> bytes:
    """The stored message in CRLF form, for plugins (`mailgate_deliver` gets bytes)."""
    converter = CRLFConverter()
    with open(path, "rb") as handle:
        return converter.feed(handle.read()) + converter.finish()
