"""Telling a sender what became of a queued message: bounces and delay warnings (RFC 3464).

The report is built off the reactor (it may attach a large original) and
delivered like any message, through the delivery transaction it is given
at construction, from the null sender so reports never loop. When given a
`sign` function (DKIM, mailgate.app.pipeline wires `[dkim]`'s), the
report is signed there too, in the same thread: the signature fields go
on top, below the trace fields.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Awaitable, Callable

from twisted.internet.defer import Deferred

from mailgate.core.session import Envelope
from mailgate.core.trace import trace_header
from mailgate.outbound.dsn import RecipientStatus, build_dsn
from mailgate.outbound.spool import QueuedMessage, RecipientState
from mailgate.store.maildir_writer import StoredMessage

Inject = Callable[[Envelope, StoredMessage, str], Awaitable[None]]
Sign = Callable[[bytes], list[bytes]]  # blocking: a message (LF) -> header fields to add (CRLF each)


class BounceSender:
    """Builds DSNs for queue entries and hands them to `inject` for delivery."""

    def __init__(self, hostname: str, max_queue_seconds: float, message_path: Callable[[str], str],
                 run_blocking: Callable[..., Deferred], inject: Inject, sign: Sign | None = None) -> None:
        self._hostname = hostname
        self._max_queue_seconds = max_queue_seconds
        self._message_path = message_path
        self._run = run_blocking
        self._inject = inject
        self._sign = sign

    async def report(self, entry: QueuedMessage, recipients: list[RecipientState], action: str) -> None:
        """An RFC 3464 report to the sender ("failed": a bounce; "delayed": a warning)."""
        retry_until = datetime.fromtimestamp(entry.arrived + self._max_queue_seconds, timezone.utc)
        statuses = [
            RecipientStatus(
                recipient=r.address, action=action,
                status=r.enhanced or ("5.0.0" if action == "failed" else "4.0.0"),
                diagnostic=" ".join(str(part) for part in (r.code, r.enhanced, r.diagnostic) if part),
                remote_mta=r.remote_mta, will_retry_until=retry_until if action == "delayed" else None,
            )
            for r in recipients
        ]
        report, signatures = await self._run(
            lambda: self._signed(build_dsn(
                reporting_mta=_reporting_mta(recipients, self._hostname), sender=entry.sender, statuses=statuses,
                original=self._message_path(entry.id),
                arrival=datetime.fromtimestamp(entry.arrived, timezone.utc), queue_id=entry.id,
            ))
        )
        bounce_id = f"{entry.id}{'B' if action == 'failed' else 'W'}"
        envelope = Envelope(mail_from="", rcpt_to=[entry.sender], may_relay=True)
        header = trace_header(
            mail_from="", hostname=self._hostname, queue_id=bounce_id, protocol="local", recipients=[entry.sender]
        ) + signatures
        message = StoredMessage.build(header, [report], len(report), report.count(b"\n"))
        await self._inject(envelope, message, bounce_id)

    def _signed(self, report: bytes) -> tuple[bytes, bytes]:
        """The report and its signature fields (LF line ends, as stored); b"" when unsigned."""
        fields = self._sign(report) if self._sign is not None else []
        return report, b"".join(fields).replace(b"\r\n", b"\n")


def _reporting_mta(recipients: list[RecipientState], hostname: str) -> str:
    """The pool's EHLO name when the recipients were last tried through a pool (one per message)."""
    return next((r.reporting_mta for r in recipients if r.reporting_mta), hostname)
