"""Delivery status notifications (RFC 3464): the bounce and delay-warning messages.

`build_dsn` turns per-recipient outcomes into one multipart/report message
(RFC 6522) for the envelope sender. Deciding who gets one, and sending it
with the null sender `<>` so bounces cannot loop, is the caller's job.
"""

from __future__ import annotations

import io
import itertools
import os
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid
from typing import Any, BinaryIO, Sequence, cast

# Parts are built under a 7-bit policy so set_content() never picks 8bit for
# our own text: only the attached original may carry 8-bit octets.
_BUILD = policy.default.clone(linesep="\n", cte_type="7bit")
# refold_source="none" writes the original's header lines, and our hand-folded
# delivery-status fields, exactly as given; 8bit lets an 8-bit original through.
_WRITE = policy.default.clone(linesep="\n", cte_type="8bit", refold_source="none")
_MAX_FIELD = 900  # a field, even one unbreakable token, stays under 998 octets (RFC 5322 2.1.1)
_ACTIONS = ("failed", "delayed", "delivered", "relayed")

_FAILED_SUBJECT = "Undelivered Mail Returned to Sender"
_DELAYED_SUBJECT = "Delayed Mail (still being retried)"
_SUCCESS_SUBJECT = "Successful Mail Delivery Report"
_INTRO = "This is the mail system at host {host}.\n\n"
_FAILED = """\
Your message could not be delivered to one or more recipients, for the
reasons below. Your message (or, if it was large, its headers) is attached.
"""
_DELAYED = """\
THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.

Your message has not yet been delivered to the recipients below.
The mail system keeps trying until the time given for each.
"""
_SUCCESS = """\
Your message was delivered to the destinations listed below, as you asked.
Where it was relayed to a system that does not report on delivery, you
will hear no more from it; otherwise you may still hear of problems.
"""


@dataclass(frozen=True)
class RecipientStatus:
    """What happened to one recipient, as the report will state it."""

    recipient: str  # the final recipient address
    action: str  # "failed" | "delayed"
    status: str  # enhanced status code, e.g. "5.1.1" or "4.4.1"
    diagnostic: str  # the remote reply, e.g. "550 5.1.1 <bob@x>: user unknown", or our own reason
    remote_mta: str | None = None  # the host that answered, if any
    original_recipient: str | None = None  # the address, or "type;address" as ORCPT gave it
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None  # for "delayed"

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"DSN action must be one of {_ACTIONS}, not {self.action!r}")


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    statuses: Sequence[RecipientStatus],
    original: bytes | str | os.PathLike[str],
    arrival: datetime,
    queue_id: str,
    now: datetime | None = None,
    full_message_limit: int = 100_000,
    envelope_id: str | None = None,
) -> bytes:
    """Return the whole DSN for `sender` as bytes with LF line ends.

    `original` (a stored message's path, or its bytes) comes back whole up to
    `full_message_limit` octets, else only its headers (0: headers only, for
    RET=HDRS and success reports). `envelope_id` is the sender's ENVID,
    decoded (RFC 3464 2.2.1). No Return-Path: the
    caller stores it and sends it with the null sender like any other message.
    """
    if not sender:
        raise ValueError("a DSN is never sent to the null sender <>")
    if not statuses:
        raise ValueError("a DSN reports on at least one recipient")
    report = EmailMessage(_BUILD)
    report["From"] = Address("Mail Delivery System", "MAILER-DAEMON", reporting_mta)
    if sender.isascii():
        report["To"] = sender
    else:
        report.set_raw("To", sender)  # RFC 6532 3.2: a UTF-8 address as it is, never an encoded-word
    report["Subject"] = _kind(statuses)[0]
    report["Date"] = _date(now or datetime.now(timezone.utc))
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: auto-responders must not answer it
    report["MIME-Version"] = "1.0"
    report.add_header("Content-Type", "multipart/report", report_type="delivery-status")
    status_part = _delivery_status(reporting_mta, queue_id, arrival, statuses, envelope_id)
    for part in (_explanation(reporting_mta, statuses), status_part,
                 _original_part(*_load(original, full_message_limit))):
        report.attach(cast(EmailMessage, part))  # typeshed wants EmailMessage; any MIMEPart is a valid part
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=_WRITE if sender.isascii() else _WRITE.clone(utf8=True)).flatten(report)
    return buffer.getvalue()


def _kind(statuses: Sequence[RecipientStatus]) -> tuple[str, str]:
    """The subject and text of the report: any failure makes it a bounce, else a
    delay makes it a warning, else it tells of success."""
    actions = {s.action for s in statuses}
    if "failed" in actions:
        return _FAILED_SUBJECT, _FAILED
    if "delayed" in actions:
        return _DELAYED_SUBJECT, _DELAYED
    return _SUCCESS_SUBJECT, _SUCCESS


def _explanation(reporting_mta: str, statuses: Sequence[RecipientStatus]) -> MIMEPart:
    """The human-readable first part: what mail clients show as the bounce."""
    intro = _INTRO.format(host=reporting_mta) + _kind(statuses)[1]
    part = MIMEPart(_BUILD)
    part.set_content(intro + "\n" + "\n\n".join(map(_explain, statuses)) + "\n")
    return part


def _explain(status: RecipientStatus) -> str:
    """One recipient's paragraph, worded like Postfix's so users recognise it."""
    reason = " ".join(status.diagnostic.split()) or f"delivery status {status.status}"
    said = f"host {status.remote_mta} said: {reason}" if status.remote_mta else reason
    if status.action == "delayed" and status.will_retry_until:
        said += f" (still trying until {_date(status.will_retry_until)})"
    return textwrap.fill(f"<{status.recipient}>: {said}", 76, subsequent_indent="    ",
                         break_long_words=False, break_on_hyphens=False)


def _delivery_status(
    reporting_mta: str, queue_id: str, arrival: datetime, statuses: Sequence[RecipientStatus],
    envelope_id: str | None = None,
) -> MIMEPart:
    """The machine-readable part (RFC 3464 section 2): a per-message block,
    then one block per recipient in order. The email package writes a list of
    header-only messages as blank-line-separated blocks; a string payload
    would be base64-encoded by set_content() and unreadable to DSN parsers.
    """
    part = MIMEPart(_BUILD)
    part["Content-Type"] = "message/delivery-status"
    per_message: list[tuple[str, str | None]] = [
        ("Original-Envelope-Id", envelope_id),
        ("Reporting-MTA", f"dns; {reporting_mta}"),
        ("X-Mailgate-Queue-ID", queue_id),
        ("Arrival-Date", _date(arrival)),
    ]
    blocks = [_block(per_message)] + [_block(_recipient_fields(s)) for s in statuses]
    part.set_payload(cast(Any, blocks))  # message/delivery-status holds header blocks (RFC 3464 2.1)
    return part


def _recipient_fields(s: RecipientStatus) -> list[tuple[str, str | None]]:
    """The per-recipient fields of RFC 3464 section 2.3; empty means omitted.
    Will-Retry-Until belongs to "delayed" only (section 2.3.9)."""
    retry_until = s.will_retry_until if s.action == "delayed" else None
    return [
        ("Final-Recipient", _address(s.recipient)),
        ("Original-Recipient", s.original_recipient and _typed(s.original_recipient)),
        ("Action", s.action),
        ("Status", s.status),
        ("Remote-MTA", s.remote_mta and f"dns; {s.remote_mta}"),
        ("Diagnostic-Code", s.diagnostic and f"smtp; {s.diagnostic}"),
        ("Last-Attempt-Date", _date(s.last_attempt) if s.last_attempt else None),
        ("Will-Retry-Until", _date(retry_until) if retry_until else None),
    ]


def _block(fields: list[tuple[str, str | None]]) -> MIMEPart:
    """One header-only block with values stored raw: policy.default folds a
    token longer than a line into RFC 2047 encoded-words, which DSN readers do
    not decode. So values are made 7-bit (RFC 6533 \\x{HHHH} escapes), capped,
    and folded here at spaces only.
    """
    block = MIMEPart(_BUILD)
    for name, value in fields:
        if value:
            text = _ascii(" ".join(value.split()))[:_MAX_FIELD]
            lines = textwrap.wrap(text, 78, initial_indent="x" * (len(name) + 2),
                                  break_long_words=False, break_on_hyphens=False)
            block.set_raw(name, "\n ".join([lines[0][len(name) + 2:], *lines[1:]]))
    return block


def _address(address: str) -> str:
    """An address with its type: "utf-8" for SMTPUTF8 addresses (RFC 6533)."""
    return f"{'rfc822' if address.isascii() else 'utf-8'}; {address}"


def _typed(address: str) -> str:
    """An ORCPT ("rfc822;bob@x") as it came, with its own type; a bare address gets one."""
    return address if ";" in address else _address(address)


def _ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else f"\\x{{{ord(c):04X}}}" for c in text)


def _date(moment: datetime) -> str:
    """RFC 5322 date; a naive datetime is taken as UTC rather than "-0000"."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return format_datetime(moment)


def _load(original: bytes | str | os.PathLike[str], limit: int) -> tuple[bytes, bool]:
    """Return (octets to attach, whether that is the whole message). A file
    over the limit is read only up to its body: a 50 MB bounce costs kilobytes.
    """
    if isinstance(original, bytes):
        data = original.replace(b"\r\n", b"\n")
        return (data, True) if len(data) <= limit else (_header_block(io.BytesIO(data)), False)
    with open(original, "rb") as stored:
        if os.fstat(stored.fileno()).st_size <= limit:
            return stored.read().replace(b"\r\n", b"\n"), True
        return _header_block(stored), False


def _header_block(stream: BinaryIO) -> bytes:
    """Every line up to the first empty one (RFC 5322 2.1): never any body."""
    head = itertools.takewhile(lambda line: line.rstrip(b"\r\n"), stream)
    return b"".join(head).replace(b"\r\n", b"\n")


def _original_part(data: bytes, whole: bool) -> MIMEPart:
    """The returned message as message/rfc822, else text/rfc822-headers
    (RFC 6522 section 3), marked 8bit only when it holds 8-bit octets."""
    part = MIMEPart(_BUILD)
    message = _reserializable(data) if whole else None
    if message is not None:
        part.set_content(message, cte="7bit" if data.isascii() else "8bit")
        return part
    headers = _header_block(io.BytesIO(data)) if whole else data
    part.set_content(headers, "text", "rfc822-headers", cte="7bit" if headers.isascii() else "8bit")
    return part


def _reserializable(data: bytes) -> EmailMessage | None:
    """The parsed original, or None when the email package cannot write it
    back: it raises on some malformed MIME (an 8-bit multipart without a
    boundary), and the bounce must go out anyway, with the headers only."""
    try:
        message = BytesParser(EmailMessage, policy=_WRITE).parsebytes(data)
        BytesGenerator(io.BytesIO(), policy=_WRITE).flatten(message)
    except Exception:  # noqa: BLE001 - any parser/generator failure means "headers only"
        return None
    return message
