"""MAIL FROM (RFC 5321 4.1.1.2): the path and its parameters, the plugins' verdict, relay permission.

Who may send as whom and how fast are built-in plugins on
`mailgate_mail_from` (mailgate.builtin.sender_policy), asked after the
operator's own plugins.
"""

from __future__ import annotations

from ipaddress import ip_address

from mailgate.core.addresses import AddressError, normalize_mailbox, parse_command_path
from mailgate.core.reply import Reply
from mailgate.core.session import Envelope
from mailgate.hooks.calling import FAILED, HookFailed
from mailgate.smtp.channel import Channel, Pending
from mailgate.smtp.dsn_parameters import MAIL_CHECKS, check_mail_parameter, unsupported
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

OK = Reply(250, "2.1.0", "Ok")
NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first")
NESTED = Reply(503, "5.5.1", "Nested MAIL command")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs MAIL FROM with SMTPUTF8")  # RFC 6531 3.5


def mail(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | Pending:
    """Open the envelope, or say why not; the plugins' verdict is awaited (a coroutine)."""
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
    refusal = parameter_refusal(params, policy)
    if refusal is not None:
        return refusal
    if not sender.isascii() and "SMTPUTF8" not in params:
        return NEED_SMTPUTF8
    envelope = Envelope(mail_from=sender, parameters=params, session=session,
                        may_relay=may_relay(session.user, session.peer, policy))
    if not policy.hooks.implemented("mailgate_mail_from"):
        state.envelope = envelope
        return OK
    return _ask_plugins(envelope, state, policy)


async def _ask_plugins(envelope: Envelope, state: SessionState, policy: ListenerPolicy) -> Reply:
    """mailgate_mail_from: a plugin's refusal, or the transaction opens."""
    try:
        refusal = await policy.hooks.refusal("mailgate_mail_from", session=envelope.session, envelope=envelope,
                                             sender=envelope.mail_from)
    except HookFailed:
        refusal = FAILED
    if refusal is not None:
        policy.events.emit("refused", mail_from=envelope.mail_from, reply=refusal, client=envelope.session.peer)
        return refusal
    state.envelope = envelope
    return OK


def parameter_refusal(params: dict[str, str | None], policy: ListenerPolicy) -> Reply | None:
    """SIZE within the limit, BODY=7BIT/8BITMIME (RFC 1870, RFC 6152), SMTPUTF8 (RFC 6531)
    and, where DSN is offered, RET and ENVID (RFC 3461) are all MAIL takes."""
    for name, value in params.items():
        if name == "SIZE" and value and value.isdigit():
            if int(value) > policy.config.limits.max_message_size:
                return TOO_BIG
        elif name == "BODY" and value and value.upper() in ("7BIT", "8BITMIME"):
            continue
        elif name == "SMTPUTF8" and value is None:  # RFC 6531 3.4: a keyword, no value
            continue
        elif name in MAIL_CHECKS:
            refusal = check_mail_parameter(params, name, policy)
            if refusal is not None:
                return refusal
        else:
            return unsupported(name)
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
