"""The SMTP DATA command: one message, from the 354 to the final reply.

`data` checks the transaction and hands the session a DataReader, which
then takes the body in bulk; at the end of the data the session calls
`finish_message`, which refuses what the reader found wrong, lets the
`mailgate_message` plugins see and change the message, and gives it, with
its Received: header, to the deliverer.
"""

from __future__ import annotations

from twisted.logger import Logger

from mailgate.core.errors import DeliveryError
from mailgate.core.queue_ids import transaction_id
from mailgate.core.reply import Reply
from mailgate.core.session import Envelope
from mailgate.core.trace import trace_header
from mailgate.hooks.calling import FAILED, HookFailed
from mailgate.inbound.message_hooks import run_message_hooks
from mailgate.inbound.transaction import Delivered
from mailgate.smtp.channel import Channel
from mailgate.smtp.data_reader import DataReader
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState
from mailgate.store.maildir_writer import StoredMessage

log = Logger()

GO_AHEAD = Reply(354, text="End data with <CR><LF>.<CR><LF>")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NO_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
DELIVERED = Reply(250, "2.0.0", "Delivered")  # what a `delivered` event says of a Maildir or inline gateway
BARE_NEWLINE = Reply(550, "5.5.2", "Message contains bare CR or LF characters")
NUL = Reply(550, "5.5.2", "Message contains NUL characters")
AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT")  # RFC 3030 2

def data(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Reply:
    if argument:
        return DATA_SYNTAX
    if state.envelope is None:
        return NEED_MAIL
    if not state.envelope.rcpt_to:
        return NO_RECIPIENTS
    if state.chunks is not None and state.chunks[0] is state.envelope:
        return AFTER_BDAT
    channel.receive_data(DataReader(max_size=policy.config.limits.max_message_size))
    return GO_AHEAD


async def finish_message(reader: DataReader, envelope: Envelope, esmtp: bool, policy: ListenerPolicy) -> Reply:
    """The reply ending DATA: a refusal, the deliverer's failure, or "queued as"."""
    queue_id = transaction_id()
    refusal = data_refusal(reader, policy.config.security.bare_newline)
    message: StoredMessage | Reply = refusal if refusal is not None else await _message(reader, envelope, esmtp,
                                                                                         queue_id, policy)
    if isinstance(message, Reply):
        return _refused(envelope, queue_id, message, policy)
    try:
        delivered = await policy.deliverer.deliver(envelope, message, queue_id)
    except DeliveryError as exc:
        log.warn("{id}: delivery failed: {reason}", id=queue_id, reason=exc.reason)
        return _refused(envelope, queue_id, exc.reply, policy)
    if policy.events.wanted:  # the log's lines per recipient come from these (mailgate.ops)
        _tell_received(envelope, queue_id, delivered, policy, message.size)
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def _tell_received(envelope: Envelope, queue_id: str, delivered: list[Delivered], policy: ListenerPolicy,
                   size: int) -> None:
    """`received` for every recipient, then `delivered` for those already in their Maildir or gateway."""
    listener = envelope.session.listener
    for recipient, route in envelope.routes.items():
        policy.events.emit("received", queue_id=queue_id, mail_from=envelope.mail_from, recipient=recipient,
                           route=route, client=envelope.session.peer, listener=listener, size=size)
    for done in delivered:
        policy.events.emit("delivered", queue_id=done.queue_id, mail_from=done.mail_from, recipient=done.recipient,
                           route=done.route, reply=DELIVERED, attempt=1, relay=str(done.route), delay=0.0)


async def _message(reader: DataReader, envelope: Envelope, esmtp: bool, queue_id: str,
                   policy: ListenerPolicy) -> StoredMessage | Reply:
    """The message to store, as the mailgate_message plugins left it, or their refusal."""
    header = received_header(envelope, esmtp, queue_id, policy.config.server.hostname)
    if not policy.hooks.implemented("mailgate_message"):
        return StoredMessage.build(header, reader.chunks, reader.size, reader.lines)
    wire = b"".join(reader.chunks).replace(b"\n", b"\r\n")
    try:
        changed = await run_message_hooks(policy.hooks, envelope, wire, policy.config.limits.max_message_size)
    except HookFailed:
        return FAILED
    if isinstance(changed, Reply):
        return changed
    header += b"".join(changed.headers).replace(b"\r\n", b"\n")
    envelope.routes.update(changed.routes)
    if not changed.replaced:
        return StoredMessage.build(header, reader.chunks, reader.size, reader.lines)
    body = changed.message.replace(b"\r\n", b"\n")
    return StoredMessage.build(header, [body], len(body), body.count(b"\n"))


def _refused(envelope: Envelope, queue_id: str, reply: Reply, policy: ListenerPolicy) -> Reply:
    if policy.events.wanted:
        for recipient, route in envelope.routes.items():
            policy.events.emit("refused", queue_id=queue_id, mail_from=envelope.mail_from, recipient=recipient,
                               route=route, reply=reply, client=envelope.session.peer)
    return reply


def received_header(envelope: Envelope, esmtp: bool, queue_id: str, hostname: str) -> bytes:
    """Return-Path and Received:, the protocol named as RFC 3848 does (ESMTPSA: TLS and AUTH),
    UTF8SMTP for a SMTPUTF8 transaction (RFC 6531 4.3)."""
    session = envelope.session
    protocol = "UTF8SMTP" if "SMTPUTF8" in envelope.parameters else "ESMTP" if esmtp else "SMTP"
    protocol += "S" if session.tls else ""
    protocol += "A" if session.user else ""
    return trace_header(
        mail_from=envelope.mail_from, hostname=hostname, queue_id=queue_id, protocol=protocol,
        recipients=envelope.rcpt_to, helo=session.helo, client_ip=session.peer,
    )


def data_refusal(reader: DataReader, bare_newline_policy: str) -> Reply | None:
    """The reply refusing a received message, or None to deliver it."""
    if reader.too_big:
        return TOO_BIG
    if reader.line_too_long:
        return LINE_TOO_LONG
    # "normalize" (the default, as Postfix 3.9's smtpd_forbid_bare_newline = normalize) takes a bare LF
    # as a line end; a bare CR or a NUL is refused whatever the policy (SPEC, "Changed defaults").
    if reader.bare_cr or (reader.bare_lf and bare_newline_policy == "reject"):
        return BARE_NEWLINE
    if reader.nul_byte:
        return NUL
    return None
