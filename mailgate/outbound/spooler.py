"""Putting messages into the spool and taking them out: group-committed, off the reactor.

The delivery transaction adds entries, the scheduler saves and removes
them; every write goes through one Batcher per kind, so concurrent
transactions share syncs as Maildir deliveries do. An entry is handed to
whoever listens (the scheduler) only once it is released, after the rest
of its transaction has been stored too. What it writes it also tells its
QueueIndex, the queue in memory for the status page and the metrics.
"""

from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet.defer import Deferred

from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.outbound.queue_index import QueueIndex
from mailgate.outbound.spool import QueuedMessage, QueueStore, RecipientState
from mailgate.store.group_commit import Batcher
from mailgate.store.maildir_writer import StoredMessage

Blocking = Callable[..., Deferred]
NewEntry = tuple[str, Envelope, Sequence[tuple[str, Route]], StoredMessage]  # id, envelope, recipients, message


class Spooler:
    """Durable writes to one QueueStore, and the release of new entries to the scheduler."""

    def __init__(self, store: QueueStore, run_blocking: Blocking, now: Callable[[], float]) -> None:
        self.store = store
        self._now = now
        self._adds: Batcher = Batcher(run_blocking, store.add_batch)
        self._saves: Batcher = Batcher(run_blocking, store.save_batch)
        self._removes: Batcher = Batcher(run_blocking, store.remove_batch)
        self._listeners: list[Callable[[QueuedMessage], None]] = []
        self._added: dict[str, QueuedMessage] = {}  # stored, not released yet
        self.index = QueueIndex()

    def on_release(self, listener: Callable[[QueuedMessage], None]) -> None:
        """Call `listener(entry)` for every entry released from now on: the entry as stored,
        so that its first attempt need not read it back."""
        self._listeners.append(listener)

    async def add(self, entries: Sequence[NewEntry]) -> None:
        """Store one transaction's entries durably, all or none; release() them after."""
        now = self._now()
        job = [(self._entry(queue_id, envelope, recipients, now), message)
               for queue_id, envelope, recipients, message in entries]
        await self._adds.submit(job)
        for entry, _ in job:
            self.index.note(entry)
            self._added[entry.id] = entry

    @staticmethod
    def _entry(queue_id: str, envelope: Envelope, recipients: Sequence[tuple[str, Route]],
               now: float) -> QueuedMessage:
        dsn = envelope.recipient_parameters
        return QueuedMessage(
            id=queue_id, sender=envelope.mail_from, arrived=now, next_attempt=now,
            recipients=[RecipientState(address, str(route), notify=dsn.get(address, {}).get("NOTIFY"),
                                       orcpt=dsn.get(address, {}).get("ORCPT"))
                        for address, route in recipients],
            session=envelope.session.to_dict(), parameters=dict(envelope.parameters),
        )

    def release(self, queue_ids: Sequence[str]) -> None:
        """The client may hear 250: the entries are the scheduler's now."""
        for queue_id in queue_ids:
            entry = self._added.pop(queue_id)
            for listener in self._listeners:
                listener(entry)

    def save(self, entry: QueuedMessage) -> Deferred:
        self.index.note(entry)
        return self._saves.submit(entry)

    def remove(self, queue_id: str) -> Deferred:
        """Drop an entry (delivered, given up on, deleted, or its transaction failed)."""
        self.index.discard(queue_id)
        self._added.pop(queue_id, None)
        return self._removes.submit(queue_id)
