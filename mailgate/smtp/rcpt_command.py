"""RCPT TO (RFC 5321 4.1.1.3): the recipient limit, the path, and routing through the plugins."""

from __future__ import annotations

from mailgate.core.addresses import AddressError, normalize_mailbox, parse_command_path
from mailgate.core.reply import Reply
from mailgate.core.session import Envelope
from mailgate.inbound.routing import accept_recipient
from mailgate.smtp.channel import Channel, Pending
from mailgate.smtp.dsn_parameters import rcpt_parameters
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
TOO_MANY = Reply(452, "4.5.3", "Too many recipients")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs MAIL FROM with SMTPUTF8")  # RFC 6531 3.5


def rcpt(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply | Pending:
    """Refuse at once what needs no plugin; otherwise route the recipient (a coroutine)."""
    envelope = state.envelope
    if envelope is None:
        return NEED_MAIL
    if len(envelope.rcpt_to) >= policy.config.limits.max_recipients:
        return TOO_MANY
    try:
        path, params = parse_command_path(argument, "TO")
        recipient = postmaster(path, policy) or normalize_mailbox(path)
    except AddressError as exc:
        return Reply(501, "5.1.3", str(exc))
    checked = rcpt_parameters(params, policy)
    if isinstance(checked, Reply):
        return checked
    if not recipient.isascii() and "SMTPUTF8" not in envelope.parameters:
        return NEED_SMTPUTF8
    if policy.events.wanted:
        return _accept_telling(envelope, recipient, checked, policy)
    return accept_recipient(policy.hooks, envelope, recipient, checked)


async def _accept_telling(envelope: Envelope, recipient: str, parameters: dict[str, str],
                          policy: ListenerPolicy) -> Reply:
    """accept_recipient, with a `refused` event when it refuses."""
    reply = await accept_recipient(policy.hooks, envelope, recipient, parameters)
    if not reply.positive:
        policy.events.emit("refused", mail_from=envelope.mail_from, recipient=recipient, reply=reply,
                           client=envelope.session.peer)
    return reply


def postmaster(path: str, policy: ListenerPolicy) -> str | None:
    """RFC 5321 4.5.1: a bare <postmaster> must be accepted."""
    if path.lower() == "postmaster" and policy.config.domains.local:
        return f"postmaster@{policy.config.domains.local[0]}"
    return None
