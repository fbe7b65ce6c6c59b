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
from typing import Awaitable, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailgate.core.dsn import DELAY, FAILURE, SUCCESS, original_recipient, wants, xtext_decode
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.core.trace import trace_header
from mailgate.outbound.dsn import RecipientStatus, build_dsn
from mailgate.outbound.spool import DELIVERED, QueuedMessage, RecipientState
from mailgate.outbound.transport import RecipientResult
from mailgate.store.maildir_writer import StoredMessage

Inject = Callable[[Envelope, StoredMessage, str], Awaitable[None]]
Sign = Callable[[bytes], list[bytes]]  # blocking: a message (LF) -> header fields to add (CRLF each)
log = Logger(namespace="mailgate.delivery")  # beside the delivery lines it follows


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
        """An RFC 3464 report to the sender ("failed": a bounce; "delayed": a warning) on the
        recipients whose NOTIFY asks for it (RFC 3461 4.1: NEVER, or a list without it, asks not)."""
        wanted = [r for r in recipients if wants(r.notify, FAILURE if action == "failed" else DELAY)]
        if wanted and entry.sender:
            await self._send(entry, [(r, action) for r in wanted])

    async def report_success(self, entry: QueuedMessage, results: Mapping[str, RecipientResult]) -> None:
        """The `delivered` or `relayed` report for the recipients delivered now that asked for
        NOTIFY=SUCCESS; none where the next hop offers DSN (it reports then, RFC 3461 5.2.2)."""
        done = [(r, results[r.address].success_action) for r in entry.recipients
                if r.status == DELIVERED and r.address in results and wants(r.notify, SUCCESS)]
        outcomes = [(r, action) for r, action in done if action]
        if outcomes and entry.sender:
            await self._send(entry, outcomes)

    async def report_delivered(self, queue_id: str, envelope: Envelope, message: StoredMessage,
                               delivered: Sequence[tuple[str, Route]], now: float) -> None:
        """The `delivered` report for recipients stored or gatewayed while the client waited
        (Maildirs, inline gateways) whose RCPT asked for NOTIFY=SUCCESS."""
        parameters = envelope.recipient_parameters
        recipients = [RecipientState(address, str(route), DELIVERED, 250, "2.0.0", "delivered",
                                     notify=parameters.get(address, {}).get("NOTIFY"),
                                     orcpt=parameters.get(address, {}).get("ORCPT"))
                      for address, route in delivered]
        entry = QueuedMessage(queue_id, envelope.mail_from, now, recipients, parameters=dict(envelope.parameters))
        outcomes = [(r, "delivered") for r in recipients if wants(r.notify, SUCCESS)]
        if outcomes and entry.sender:
            await self._send(entry, outcomes, _headers_of(message))

    async def _send(self, entry: QueuedMessage, outcomes: Sequence[tuple[RecipientState, str]],
                    original: bytes | None = None) -> None:
        """Build one report off the reactor (the original may be large) and deliver it. Only the
        headers come back for RET=HDRS and for success, which RFC 3461 4.3 asks to keep small."""
        retry_until = datetime.fromtimestamp(entry.arrived + self._max_queue_seconds, timezone.utc)
        statuses = [_status(r, action, retry_until) for r, action in outcomes]
        actions = {action for _, action in outcomes}
        headers_only = entry.parameters.get("RET") == "HDRS" or actions <= {"delivered", "relayed"}
        envid = entry.parameters.get("ENVID")
        recipients = [r for r, _ in outcomes]
        report, signatures = await self._run(
            lambda: self._signed(build_dsn(
                reporting_mta=_reporting_mta(recipients, self._hostname), sender=entry.sender, statuses=statuses,
                original=self._message_path(entry.id) if original is None else original,
                arrival=datetime.fromtimestamp(entry.arrived, timezone.utc), queue_id=entry.id,
                full_message_limit=0 if headers_only else 100_000, envelope_id=envid and xtext_decode(envid),
            ))
        )
        first = min(actions, key=_ACTION_ORDER.index)
        report_id = entry.id + _SUFFIX[first]
        await self.inject_report(report_id, entry.sender, report, signatures)
        log.info("{queue_id}: sender {what} notification: {bounce_id} to <{to}> for {count} recipient(s)",
                 event="bounce", queue_id=entry.id, what=_WHAT[first], bounce_id=report_id, to=entry.sender,
                 count=len(recipients))  # Postfix's words for the three kinds

    async def inject_report(self, report_id: str, sender: str, report: bytes, signatures: bytes = b"") -> None:
        """Deliver a report (with its DKIM signature fields, LF line ends), from the null sender so it never loops."""
        utf8: dict[str, str | None] = {} if sender.isascii() else {"SMTPUTF8": None}  # RFC 6531 to a UTF-8 sender
        envelope = Envelope(mail_from="", rcpt_to=[sender], may_relay=True, parameters=utf8)
        header = trace_header(
            mail_from="", hostname=self._hostname, queue_id=report_id, protocol="local", recipients=[sender]
        ) + signatures
        message = StoredMessage.build(header, [report], len(report), report.count(b"\n"))
        await self._inject(envelope, message, report_id)

    def _signed(self, report: bytes) -> tuple[bytes, bytes]:
        """The report and its signature fields (LF line ends, as stored); b"" when unsigned."""
        fields = self._sign(report) if self._sign is not None else []
        return report, b"".join(fields).replace(b"\r\n", b"\n")


_ACTION_ORDER = ["failed", "delayed", "delivered", "relayed"]
_SUFFIX = {"failed": "B", "delayed": "W", "delivered": "S", "relayed": "S"}
_WHAT = {"failed": "non-delivery", "delayed": "delay", "delivered": "delivery status", "relayed": "delivery status"}


def _headers_of(message: StoredMessage) -> bytes:
    """The message's header section, without joining its body (a success report returns
    only the headers): the chunks up to the one where the first empty line is."""
    head = [message.transit_header]
    for chunk in message.body:
        head.append(chunk)
        if b"\n\n" in chunk or chunk.startswith(b"\n"):
            break
    return b"".join(head)


def _status(r: RecipientState, action: str, retry_until: datetime) -> RecipientStatus:
    """One recipient's part of the report; a success has no diagnostic of a problem."""
    default = {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")
    return RecipientStatus(
        recipient=r.address, action=action, status=r.enhanced or default,
        diagnostic=" ".join(str(part) for part in (r.code, r.enhanced, r.diagnostic) if part),
        remote_mta=r.remote_mta, original_recipient=original_recipient(r.orcpt),
        will_retry_until=retry_until if action == "delayed" else None,
    )


def _reporting_mta(recipients: list[RecipientState], hostname: str) -> str:
    """The pool's EHLO name when the recipients were last tried through a pool (one per message)."""
    return next((r.reporting_mta for r in recipients if r.reporting_mta), hostname)
