"""Recipient routing: asking the `mailgate_route` hooks, and what their answer means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailgate.envelope import Envelope
from mailgate.plugins import first_answer

# Route schemes whose built-in delivery has not landed yet (the webhook gateway).
PENDING_SCHEMES = frozenset({"webhook"})
# Route schemes delivered at once into local Maildirs or dropped; the rest are queued.
IMMEDIATE_SCHEMES = frozenset({"local", "discard"})


@dataclass(frozen=True)
class Refusal:
    """An SMTP reply refusing a recipient."""

    code: int
    text: str  # "5.1.1 ..." : enhanced code first


def route_scheme(route: str) -> str:
    return route.partition(":")[0]


async def route_recipient(hooks: Any, recipient: str, envelope: Envelope) -> str | Refusal:
    """The route for one recipient, or the refusal the client should hear."""
    route = await first_answer(hooks.mailgate_route, recipient=recipient, envelope=envelope)
    return refusal_for(route) or route


def refusal_for(route: str | None) -> Refusal | None:
    """The reply refusing a recipient for its route, or None to accept it."""
    if route is None:
        return Refusal(550, "5.1.1 Recipient address rejected: User unknown")
    scheme, _, argument = route.partition(":")
    if scheme == "reject":
        code, _, text = argument.partition(" ")
        if len(code) == 3 and code.isdigit() and code[0] in "45":
            return Refusal(int(code), text or "5.7.1 Rejected")
        return Refusal(550, "5.7.1 Rejected")
    if scheme in PENDING_SCHEMES:
        return Refusal(451, "4.3.2 Delivery to this destination is not available yet")
    return None
