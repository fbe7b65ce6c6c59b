"""Delivery of one accepted message along the routes its recipients were given."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from twisted.logger import Logger

from mailgate.envelope import Envelope
from mailgate.errors import DeliveryError, TemporaryFailure
from mailgate.maildir import MaildirStore, StoredMessage
from mailgate.plugins import first_answer

log = Logger()

# Route schemes whose built-in delivery has not landed yet (outbound queue).
PENDING_SCHEMES = frozenset({"mx", "smtp", "webhook"})


def route_scheme(route: str) -> str:
    return route.partition(":")[0]


class Deliverer:
    """Hands a message to the local store and to plugins' `mailgate_deliver`.

    Plugin routes go first: they are the ones that may refuse, and a refusal
    must come before anything is stored, so a client told 4xx never makes a
    duplicate by retrying.
    """

    def __init__(self, store: MaildirStore, hooks: Any) -> None:
        self._store = store
        self._hooks = hooks

    async def deliver(self, envelope: Envelope, message: StoredMessage) -> None:
        """Deliver everything or raise DeliveryError; returns once durable."""
        local, plugin_routes = self._split(envelope)
        for route, recipients in plugin_routes.items():
            await self._deliver_by_plugin(route, envelope, recipients, message)
        if local:
            try:
                await self._store.deliver(local, message)
            except OSError as exc:
                raise TemporaryFailure(
                    "Local delivery failed, try again later", reason=f"maildir: {exc}"
                ) from exc

    @staticmethod
    def _split(envelope: Envelope) -> tuple[list[str], dict[str, list[str]]]:
        local: list[str] = []
        plugin_routes: dict[str, list[str]] = defaultdict(list)
        for recipient, route in envelope.routes.items():
            scheme, _, argument = route.partition(":")
            if scheme == "local":
                local.append(argument or recipient)
            elif scheme != "discard":
                plugin_routes[route].append(recipient)
        return local, plugin_routes

    async def _deliver_by_plugin(
        self, route: str, envelope: Envelope, recipients: list[str], message: StoredMessage
    ) -> None:
        wire = message.header[message.header.index(b"\n") + 1 :]  # drop Return-Path
        payload = (wire + b"".join(message.body)).replace(b"\n", b"\r\n")
        scoped = Envelope(**{**vars(envelope), "rcpt_to": recipients})
        try:
            answer = await first_answer(
                self._hooks.mailgate_deliver, route=route, envelope=scoped, message=payload
            )
        except DeliveryError:
            raise
        except Exception as exc:  # fail closed: a crashing plugin means "try later"
            log.failure("plugin delivery crashed for route {route}", route=route)
            raise TemporaryFailure(reason=f"{route}: {exc!r}") from exc
        if answer is None:
            raise TemporaryFailure(reason=f"no plugin delivers route {route!r}")
