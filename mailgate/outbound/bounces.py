"""Telling a sender what became of a queued message: bounces and delay warnings (RFC 3464).

The report is built off the reactor (it may attach a large original) and
delivered like any message, through the delivery transaction it is given
at construction, from the null sender so reports never loop.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailgate.core.session import Envelope
from mailgate.core.trace import trace_header
from mailgate.outbound.dsn import RecipientStatus, build_dsn
from mailgate.outbound.spool import QueuedMessage, RecipientState
from mailgate.store.maildir_writer import StoredMessage

Inject = Callable[[Envelope, StoredMessage, str], Awaitable[None]]
log = Logger(namespace="mailgate.delivery")  # beside the delivery lines it follows


class BounceSender:
    """Builds DSNs for queue entries and hands them to `inject` for delivery."""

    def __init__(self, hostname: str, max_queue_seconds: float, message_path: Callable[[str], str],
                 run_blocking: Callable[..., Deferred], inject: Inject) -> None:
        self._hostname = hostname
        self._max_queue_seconds = max_queue_seconds
        self._message_path = message_path
        self._run = run_blocking
        self._inject = inject

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
        report = await self._run(
            lambda: build_dsn(
                reporting_mta=self._hostname, sender=entry.sender, statuses=statuses,
                original=self._message_path(entry.id),
                arrival=datetime.fromtimestamp(entry.arrived, timezone.utc), queue_id=entry.id,
            )
        )
        bounce_id = f"{entry.id}{'B' if action == 'failed' else 'W'}"
        envelope = Envelope(mail_from="", rcpt_to=[entry.sender], may_relay=True)
        header = trace_header(
            mail_from="", hostname=self._hostname, queue_id=bounce_id, protocol="local", recipients=[entry.sender]
        )
        message = StoredMessage.build(header, [report], len(report), report.count(b"\n"))
        await self._inject(envelope, message, bounce_id)
        log.info("{queue_id}: sender {what} notification: {bounce_id} to <{to}> for {count} recipient(s)",
                 event="bounce", queue_id=entry.id, what="non-delivery" if action == "failed" else "delay",
                 bounce_id=bounce_id, to=entry.sender, count=len(recipients))
