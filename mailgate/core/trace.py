"""Trace header fields (RFC 5321 4.4): the Return-Path and Received lines mailgate prepends."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from email.utils import format_datetime

_stamp: tuple[int, str] = (0, "")  # the last second formatted: most messages share one


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
    stamp = _date_now()
    return (
        f"Return-Path: <{mail_from}>\n"
        f"Received: {source}by {hostname} (mailgate) with {protocol} id {queue_id}"
        f"{recipient};\n\t{stamp}\n"
    ).encode("utf-8", "replace")


def _date_now() -> str:
    """RFC 5322 date of this second, formatted once per second rather than per message."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, format_datetime(datetime.fromtimestamp(second, timezone.utc)))
    return _stamp[1]
