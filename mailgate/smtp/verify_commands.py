"""Address queries (RFC 5321 3.5): VRFY, EXPN, answered as security.vrfy / security.expn allow."""

from __future__ import annotations

from mailgate.core.addresses import AddressError, normalize_mailbox
from mailgate.core.reply import Reply
from mailgate.inbound.routing import expand_list
from mailgate.smtp.channel import Channel, Pending
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

CANNOT_VRFY = Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY address")
UNKNOWN = Reply(550, "5.1.1", "User unknown")
NO_EXPN = Reply(502, "5.5.1", "EXPN not available")
EXPN_REFUSED = Reply(550, "5.7.1", "EXPN not allowed")
EXPN_SYNTAX = Reply(501, "5.5.4", "Syntax: EXPN list")
NOT_A_LIST = Reply(550, "5.1.1", "Not a mailing list")


def vrfy(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | Pending:
    if not allows(policy.config.security.vrfy, state):
        return CANNOT_VRFY
    address = query_address(argument)
    if address is None:
        return VRFY_SYNTAX
    return verify(address, policy)


async def verify(address: str, policy: ListenerPolicy) -> Reply:
    known = await policy.hooks.first("mailgate_verify", address=address)
    if known is None:
        return CANNOT_VRFY
    if known:
        return Reply(250, "2.1.5", f"<{address}>")
    return UNKNOWN


def expn(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | Pending:
    setting = policy.config.security.expn
    if setting == "off":
        return NO_EXPN
    if not allows(setting, state):
        return EXPN_REFUSED
    address = query_address(argument)
    if address is None:
        return EXPN_SYNTAX
    return expand(address, policy)


async def expand(address: str, policy: ListenerPolicy) -> Reply:
    members = await expand_list(policy.hooks, address)
    if not members:
        return NOT_A_LIST
    return Reply(250, "2.1.5", "\n".join(f"<{member}>" for member in members))


def allows(setting: str, state: SessionState) -> bool:
    """security.vrfy / security.expn: off | authenticated | all."""
    return setting == "all" or (setting == "authenticated" and state.session.user is not None)


def query_address(argument: str) -> str | None:
    try:
        return normalize_mailbox(argument.strip().removeprefix("<").removesuffix(">"))
    except AddressError:
        return None
