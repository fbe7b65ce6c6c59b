"""Recipient routing: forwarding, the `mailgate_route` hooks, list expansion, and refusals."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mailgate.core.envelope import Envelope
from mailgate.hooks.manager import first_answer

MAX_FORWARD_DEPTH = 10
LOOP = "5.4.6 Mail forwarding loop detected"


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


async def resolve(hooks: Any, recipient: str, envelope: Envelope) -> list[tuple[str, str]] | Refusal:
    """Every (delivery address, route) one RCPT TO stands for, or its refusal.

    `mailgate_forward` may replace a recipient by others, which are resolved
    in turn; a target equal to the recipient itself is its kept copy and is
    routed without forwarding again, while a chain that comes back to an
    address already on it is a loop (554 5.4.6). Forward targets are
    mailgate's own rules, so they may be relayed whoever the client is.
    """
    return await _resolve(hooks, recipient, envelope, chain=(recipient,))


async def _resolve(
    hooks: Any, recipient: str, envelope: Envelope, chain: tuple[str, ...]
) -> list[tuple[str, str]] | Refusal:
    targets = await first_answer(hooks.mailgate_forward, recipient=recipient)
    if targets is None:
        route = await route_recipient(hooks, recipient, envelope)
        return route if isinstance(route, Refusal) else [(recipient, route)]
    if len(chain) > MAX_FORWARD_DEPTH:
        return Refusal(554, LOOP)
    forwarded = replace(envelope, may_relay=True)
    resolved: list[tuple[str, str]] = []
    for target in dict.fromkeys(t.lower() for t in targets):
        if target == recipient:
            found = await route_recipient(hooks, target, envelope)
            found = found if isinstance(found, Refusal) else [(target, found)]
        elif target in chain:
            return Refusal(554, LOOP)
        else:
            found = await _resolve(hooks, target, forwarded, chain + (target,))
        if isinstance(found, Refusal):
            return found
        resolved.extend(found)
    return resolved


async def expand_list(hooks: Any, address: str) -> list[str]:
    """A list's members with nested lists flattened, each address once.

    A list that contains itself, directly or through another, is expanded
    only the first time it is met.
    """
    members: dict[str, None] = {}
    seen = {address}
    pending = [await first_answer(hooks.mailgate_expand, address=address)]
    while pending:
        for member in pending.pop(0) or ():
            member = member.lower()
            if member in seen:
                continue
            seen.add(member)
            nested = await first_answer(hooks.mailgate_expand, address=member)
            if nested is None:
                members[member] = None
            else:
                pending.append(nested)
    return list(members)


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
    return None
