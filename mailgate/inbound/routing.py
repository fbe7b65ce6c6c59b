"""Recipient routing: forwarding, the `mailgate_route` hooks, list expansion, and refusals."""

from __future__ import annotations

from dataclasses import replace

from twisted.logger import Logger

from mailgate.core.reply import Reply
from mailgate.core.route import Route, RouteError
from mailgate.core.session import Envelope
from mailgate.hooks.calling import FAILED, HookFailed, Hooks

log = Logger()

MAX_FORWARD_DEPTH = 10
LOOP = Reply(554, "5.4.6", "Mail forwarding loop detected")
UNKNOWN_USER = Reply(550, "5.1.1", "Recipient address rejected: User unknown")

Resolved = list[tuple[str, Route]]  # (delivery address, route), in order


async def route_recipient(hooks: Hooks, recipient: str, envelope: Envelope) -> Route | Reply:
    """The route for one recipient, or the refusal the client should hear.

    No answer is an unknown user; a `reject:` route is its own reply; a
    plugin that fails, or answers with something that is not a route, makes
    the client hear a temporary failure (fail closed), the log saying why.
    """
    try:
        answer = await hooks.first("mailgate_route", recipient=recipient, envelope=envelope)
    except HookFailed:
        return FAILED
    if answer is None:
        return UNKNOWN_USER
    try:
        route = Route(answer)
        return route.refusal() if route.scheme == "reject" else route
    except RouteError as error:
        log.error("mailgate_route for {rcpt}: {error}; failing closed", rcpt=recipient, error=error)
        return FAILED


async def resolve(hooks: Hooks, recipient: str, envelope: Envelope) -> Resolved | Reply:
    """Every (delivery address, route) one RCPT TO stands for, or its refusal.

    `mailgate_forward` may replace a recipient by others, which are resolved
    in turn; a target equal to the recipient itself is its kept copy and is
    routed without forwarding again, while a chain that comes back to an
    address already on it is a loop (554 5.4.6). Forward targets are
    mailgate's own rules, so they may be relayed whoever the client is.
    """
    return await _resolve(hooks, recipient, envelope, chain=(recipient,))


async def _resolve(hooks: Hooks, recipient: str, envelope: Envelope, chain: tuple[str, ...]) -> Resolved | Reply:
    try:
        targets = await hooks.first("mailgate_forward", recipient=recipient)
    except HookFailed:
        return FAILED
    if targets is None:
        return _one(recipient, await route_recipient(hooks, recipient, envelope))
    if len(chain) > MAX_FORWARD_DEPTH:
        return LOOP
    forwarded = replace(envelope, may_relay=True)
    resolved: Resolved = []
    for target in dict.fromkeys(t.lower() for t in targets):
        if target == recipient:
            found = _one(target, await route_recipient(hooks, target, envelope))
        elif target in chain:
            return LOOP
        else:
            found = await _resolve(hooks, target, forwarded, chain + (target,))
        if isinstance(found, Reply):
            return found
        resolved.extend(found)
    return resolved


def _one(recipient: str, route: Route | Reply) -> Resolved | Reply:
    return route if isinstance(route, Reply) else [(recipient, route)]


async def accept_recipient(hooks: Hooks, envelope: Envelope, recipient: str,
                           parameters: dict[str, str] | None = None) -> Reply:
    """RCPT TO for an address already parsed: route it and add it to the envelope.

    Its checked `parameters` (NOTIFY, ORCPT) go with every address it
    resolves to, so a forwarded copy is reported on as the sender asked.

    The SMTP session and `mailgate.testing` both answer RCPT with this, so
    a plugin's test hears exactly what a client would.
    """
    resolved = await resolve(hooks, recipient, envelope)
    if isinstance(resolved, Reply):
        return resolved
    if recipient not in envelope.rcpt_to:
        envelope.rcpt_to.append(recipient)
        add_routes(envelope, recipient, resolved)
        if parameters:
            envelope.recipient_parameters.update((address, parameters) for address, _ in resolved)
    return Reply(250, "2.1.5", "Ok")


def add_routes(envelope: Envelope, recipient: str, resolved: Resolved) -> None:
    """Record where `recipient` goes; every address but itself was reached through a forward."""
    envelope.routes.update(resolved)
    envelope.forwarded.update(address for address, _ in resolved if address != recipient)


async def expand_list(hooks: Hooks, address: str) -> list[str]:
    """A list's members with nested lists flattened, each address once.

    A list that contains itself, directly or through another, is expanded
    only the first time it is met.
    """
    members: dict[str, None] = {}
    seen = {address}
    pending = [await hooks.first("mailgate_expand", address=address)]
    while pending:
        for member in pending.pop(0) or ():
            member = member.lower()
            if member in seen:
                continue
            seen.add(member)
            nested = await hooks.first("mailgate_expand", address=member)
            if nested is None:
                members[member] = None
            else:
                pending.append(nested)
    return list(members)
