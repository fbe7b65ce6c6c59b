"""MAIL FROM (RFC 5321 4.1.1.2): parameters, sender ownership, sender rate, relay permission."""

from __future__ import annotations

import math
from ipaddress import ip_address

from mailgate.core.addresses import AddressError, normalize_mailbox, parse_command_path
from mailgate.core.reply import Reply
from mailgate.core.session import Envelope
from mailgate.smtp.channel import Channel
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

OK = Reply(250, "2.1.0", "Ok")
NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first")
NESTED = Reply(503, "5.5.1", "Nested MAIL command")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")


def mail(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    """Open the envelope, or say why not."""
    session = state.session
    if not session.helo:
        return NEED_HELO
    if state.envelope is not None:
        return NESTED
    if policy.listener.auth == "required" and session.user is None:
        return AUTH_REQUIRED
    try:
        path, params = parse_command_path(argument, "FROM")
        sender = normalize_mailbox(path) if path else ""
    except AddressError as exc:
        return Reply(501, "5.5.4", str(exc))
    refusal = (
        parameter_refusal(params, policy)
        or ownership_refusal(sender, session.user, policy)
        or rate_refusal(session.user, policy)  # last: it spends a token
    )
    if refusal is not None:
        return refusal
    state.envelope = Envelope(mail_from=sender, parameters=params, session=session,
                              may_relay=may_relay(session.user, session.peer, policy))
    return OK


def parameter_refusal(params: dict[str, str | None], policy: ListenerPolicy) -> Reply | None:
    """SIZE within the limit and BODY=7BIT/8BITMIME are all MAIL takes (RFC 1870, RFC 6152)."""
    for name, value in params.items():
        if name == "SIZE" and value and value.isdigit():
            if int(value) > policy.config.limits.max_message_size:
                return TOO_BIG
        elif name == "BODY" and value and value.upper() in ("7BIT", "8BITMIME"):
            continue
        else:
            return Reply(555, "5.5.4", f"Unsupported parameter {name}")
    return None


def ownership_refusal(sender: str, user: str | None, policy: ListenerPolicy) -> Reply | None:
    """An authenticated user sends as itself or its aliases, not as anyone."""
    if user is None or not sender or policy.config.security.sender_login == "any":
        return None
    if sender != user and user not in policy.owned_senders.get(sender, ()):
        return NOT_OWNED
    return None


def rate_refusal(user: str | None, policy: ListenerPolicy) -> Reply | None:
    """limits.sender_rate: messages per authenticated user, counted at MAIL."""
    if user is None:
        return None
    wait = policy.sender_rate.take(user)
    if wait:
        return Reply(450, "4.7.1", f"Sender rate limit exceeded, try again in {math.ceil(wait)} seconds")
    return None


def may_relay(user: str | None, peer: str, policy: ListenerPolicy) -> bool:
    """Authenticated users and relay.allowed_networks may send beyond the local domains."""
    if user is not None:
        return True
    try:
        client = ip_address(peer)
    except ValueError:
        return False
    return any(client in net for net in policy.config.relay.allowed_networks)
