"""The delivery transaction: every sink of one accepted message commits together, or none does.

A message accepted at the end of DATA may go to local mailboxes, to
mailing lists (each list gets a copy of its own, from the list's bounce
address, with List-Id), to gateways that deliver while the client waits
(a sync webhook) and to the outbound queue. As maddy does, all of it is
one transaction: it is planned first, with no side effects; then the
inline gateways run, and any of them failing fails the whole transaction
before anything is stored; then every queue entry is written in one group
commit and every Maildir copy in another, and if the Maildir write fails
the queue entries are removed again. Only then are the queue entries
released to the scheduler and the client told 250, so a client that hears
4xx retries without leaving a copy behind anywhere.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from mailgate.core.addresses import AddressError, normalize_mailbox
from mailgate.core.errors import DeliveryError, TemporaryFailure
from mailgate.core.lists import bounce_address, list_id
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.core.trace import trace_header
from mailgate.hooks.calling import HookFailed, Hooks
from mailgate.inbound.routing import add_routes, expand_list, resolve
from mailgate.outbound.spooler import NewEntry
from mailgate.store.maildir_writer import StoredMessage

log = Logger()

SENDER_HOOK = "mailgate_forward_sender"


@dataclass(frozen=True)
class Delivered:
    """One recipient the transaction delivered itself."""

    queue_id: str
    mail_from: str
    recipient: str
    route: Route



class Spool(Protocol):
    """What the transaction needs of the outbound spool (mailgate.outbound.spooler.Spooler)."""

    async def add(self, entries: Sequence[NewEntry]) -> None: ...

    def remove(self, queue_id: str) -> Deferred: ...

    def release(self, queue_ids: Sequence[str]) -> None: ...


class Reports(Protocol):
    """Success reports for what the transaction delivered itself (mailgate.outbound.bounces.BounceSender)."""

    async def report_delivered(self, queue_id: str, envelope: Envelope, message: StoredMessage,
                               delivered: Sequence[tuple[str, Route]], now: float) -> None: ...


class Mailboxes(Protocol):
    """What the transaction needs of the local store (mailgate.store.maildir_writer.MaildirStore)."""

    def deliver_all(self, copies: Sequence[tuple[Sequence[str], StoredMessage]]) -> Deferred: ...


@dataclass
class Part:
    """One message the transaction stores: the original, or one list's copy."""

    queue_id: str
    envelope: Envelope
    message: StoredMessage
    local: list[tuple[str, Route]] = field(default_factory=list)  # (recipient, route) for a Maildir
    queued: list[tuple[str, Route]] = field(default_factory=list)  # (recipient, route) for the queue
    inline: list[tuple[str, Route]] = field(default_factory=list)  # delivered while the client waited


class Deliverer:
    """Makes an accepted message durable, everywhere it goes, before the client hears 250."""

    def __init__(self, store: Mailboxes, spool: Spool, hooks: Hooks, hostname: str = "localhost") -> None:
        self._store = store
        self._spool = spool
        self._hooks = hooks
        self._hostname = hostname
        self.reports: Reports | None = None  # NOTIFY=SUCCESS reports (RFC 3461), once the queue is wired

    async def deliver(self, envelope: Envelope, message: StoredMessage, queue_id: str, *,
                      inline: bool = True) -> list[Delivered]:
        """Deliver or queue everything, or raise DeliveryError having kept nothing.

        Returns what was delivered at once (Maildirs, inline gateways), for
        the caller's `delivered` events; the queue tells of the rest.
        """
        original, lists = split_routes(Part(queue_id, envelope, message), envelope.routes)
        parts = [original, *await self._resent(original)]
        for index, list_address in enumerate(lists):
            copy = await self._list_copy(list_address, envelope, message, f"{queue_id}L{index}")
            if copy is not None:
                parts.append(copy)
        if inline:
            for part in parts:
                part.queued = await self._deliver_inline(part)
        await self._commit(parts)
        if envelope.recipient_parameters:
            await self._report_delivered(original)
        return [Delivered(part.queue_id, part.envelope.mail_from, recipient, route)
                for part in parts for recipient, route in (*part.local, *part.inline)]

    async def _report_delivered(self, part: Part) -> None:
        """NOTIFY=SUCCESS for what was delivered now. The message is stored already and the
        client will hear 250: a report that cannot be queued is logged, not the client's error."""
        if self.reports is None or not (part.local or part.inline):
            return
        try:
            await self.reports.report_delivered(part.queue_id, part.envelope, part.message,
                                                [*part.local, *part.inline], time.time())
        except (OSError, DeliveryError) as error:
            log.warn("{id}: success report not queued: {error}", id=part.queue_id, error=error)

    async def inject(self, envelope: Envelope, message: StoredMessage, queue_id: str) -> None:
        """Deliver a message mailgate wrote itself (a bounce): routed like any other, forwards
        (and SRS addresses, which reverse as forwards) included."""
        for recipient in envelope.rcpt_to:
            resolved = await resolve(self._hooks, recipient, envelope)
            if isinstance(resolved, Reply):
                log.warn("{id}: cannot deliver to {rcpt}: {reply}", id=queue_id, rcpt=recipient, reply=resolved)
                continue
            add_routes(envelope, recipient, resolved)
        if envelope.routes:  # queued, never inline: nobody waits on a bounce's reply
            await self.deliver(envelope, message, queue_id, inline=False)

    async def _resent(self, part: Part) -> list[Part]:
        """Forwarded recipients whose copy leaves with another envelope sender (SRS, through
        `mailgate_forward_sender`): taken out of `part`, one queue entry per new sender."""
        forwarded = part.envelope.forwarded
        if not forwarded or not self._hooks.implemented(SENDER_HOOK):
            return []
        by_sender: dict[str, list[tuple[str, Route]]] = {}
        kept = []
        for recipient, route in part.queued:
            sender = await self._new_sender(part.envelope.mail_from, recipient, route) if recipient in forwarded \
                else None
            if sender is None or sender == part.envelope.mail_from:
                kept.append((recipient, route))
            else:
                by_sender.setdefault(sender, []).append((recipient, route))
        part.queued = kept
        copies = []
        for index, (sender, recipients) in enumerate(by_sender.items()):
            envelope = replace(part.envelope, mail_from=sender, rcpt_to=[r for r, _ in recipients],
                               routes=dict(recipients), forwarded={r for r, _ in recipients})
            copies.append(Part(f"{part.queue_id}F{index}", envelope, part.message, queued=recipients))
        return copies

    async def _new_sender(self, sender: str, recipient: str, route: Route) -> str | None:
        try:
            answer = await self._hooks.first(SENDER_HOOK, sender=sender, recipient=recipient, route=route)
        except HookFailed as error:
            raise TemporaryFailure("Temporary failure, try again later", reason=str(error)) from None
        if answer is None:
            return None
        try:
            normalize_mailbox(str(answer))  # checked as MAIL FROM would be; kept as spelt (SRS0=...)
            return str(answer)
        except AddressError as error:
            reason = f"{SENDER_HOOK} answered {answer!r:.60}, not an address ({error}); failing closed"
            log.error("{reason}", reason=reason)
            raise TemporaryFailure("Temporary failure, try again later", reason=reason) from None

    async def _list_copy(self, list_address: str, envelope: Envelope, message: StoredMessage,
                         queue_id: str) -> Part | None:
        """The copy for one list's members, from the list's bounce address, so
        members' bounces reach the list and not the poster (RFC 2919 List-Id).
        Members that are lists themselves were flattened by expand_list."""
        sender = bounce_address(list_address)
        copy_envelope = Envelope(mail_from=sender, may_relay=True, session=envelope.session)
        for member in await expand_list(self._hooks, list_address):
            resolved = await resolve(self._hooks, member, copy_envelope)
            if isinstance(resolved, Reply):
                log.warn("{id}: list {list}: member {member} refused: {reply}", id=queue_id,
                         list=list_address, member=member, reply=resolved)
                continue
            copy_envelope.rcpt_to.append(member)
            copy_envelope.routes.update(resolved)
        if not copy_envelope.routes:
            return None
        header = trace_header(
            mail_from=sender, hostname=self._hostname, queue_id=queue_id, protocol="list",
            recipients=copy_envelope.rcpt_to,
        ) + f"List-Id: {list_id(list_address)}\n".encode() + message.transit_header
        copy, _ = split_routes(Part(queue_id, copy_envelope, message.with_header(header)), copy_envelope.routes)
        return copy

    async def _deliver_inline(self, part: Part) -> list[tuple[str, Route]]:
        """Offer each queued route to `mailgate_deliver_inline`; return those left to queue.

        A DeliveryError raised here propagates before anything is stored, so
        the client's reply is that error and nothing is kept.
        """
        by_route: dict[Route, list[str]] = {}
        for recipient, route in part.queued:
            by_route.setdefault(route, []).append(recipient)
        wire: bytes | None = None
        remaining: list[tuple[str, Route]] = []
        for route, recipients in by_route.items():
            if wire is None:
                wire = part.message.wire_form()
            scoped = replace(part.envelope, rcpt_to=recipients)
            answer = await self._hooks.first("mailgate_deliver_inline", route=route, envelope=scoped, message=wire)
            if answer is None:
                remaining.extend((recipient, route) for recipient in recipients)
            else:
                part.inline.extend((recipient, route) for recipient in recipients)
        return remaining

    async def _commit(self, parts: list[Part]) -> None:
        """Queue entries in one group commit, Maildir copies in another; all or none."""
        entries = [(p.queue_id, p.envelope, p.queued, p.message) for p in parts if p.queued]
        copies = [([route.mailbox(recipient) for recipient, route in p.local], p.message) for p in parts if p.local]
        try:
            if entries:
                await self._spool.add(entries)
        except OSError as exc:
            raise storage_failure(exc, "queue") from exc
        try:
            if copies:
                await self._store.deliver_all(copies)
        except OSError as exc:
            await DeferredList([self._spool.remove(queue_id) for queue_id, *_ in entries], consumeErrors=True)
            raise storage_failure(exc, "maildir") from exc
        if entries:
            self._spool.release([queue_id for queue_id, *_ in entries])


def storage_failure(exc: OSError, where: str) -> TemporaryFailure:
    """A full disk or quota is 452 4.3.1 (RFC 3463: mail system full); the
    client keeps the message and retries, and mail already accepted is kept."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TemporaryFailure("Insufficient system storage", code=452, enhanced="4.3.1", reason=f"{where}: {exc}")
    return TemporaryFailure("Local delivery failed, try again later", reason=f"{where}: {exc}")


def split_routes(part: Part, routes: dict[str, Route]) -> tuple[Part, list[str]]:
    """Fill `part` with its local mailboxes and queued recipients; return it and the
    list addresses to expand. Discarded recipients vanish."""
    lists: list[str] = []
    for recipient, route in routes.items():
        if route.scheme == "local":
            part.local.append((recipient, route))
        elif route.scheme == "list":
            lists.append(route.mailbox(recipient))
        elif route.scheme != "discard":
            part.queued.append((recipient, route))
    return part, lists
