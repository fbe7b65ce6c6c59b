"""Trace header fields (RFC 5321 4.4): the Return-Path and Received lines mailgate prepends."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime


def trace_header(
    *,
    mail_from: str,
    hostname: str,
    queue_id: str,
    protocol: str,
    recipients: list[str],
    helo: str | None = None,
    client_ip: str | None = None,
) -> bytes:
    """Return-Path and Received, in the stored LF form.

    `for <rcpt>` is named only for a single recipient, so one recipient's
    copy never reveals the others (Bcc). No DNS lookup is made for the
    client: the literal address is recorded, which costs nothing per message.
    """
    source = f"from {helo} ([{client_ip}])\n\t" if helo else ""
    recipient = f"\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    stamp = format_datetime(datetime.now(timezone.utc))
    return (
        f"Return-Path: <{mail_from}>\n"
        f"Received: {source}by {hostname} (mailgate) with {protocol} id {queue_id}"
        f"{recipient};\n\t{stamp}\n"
    ).encode("utf-8", "replace")
