"""The delivery transaction's store and spool in memory: what the server would have kept."""

from __future__ import annotations

from typing import Sequence

from twisted.internet.defer import Deferred, succeed

from mailgate.outbound.spooler import NewEntry
from mailgate.store.maildir_writer import StoredMessage


class MemoryStore:
    """Stands in for both the Maildir store and the outbound spool of a Deliverer.

    `copies` holds (mailbox addresses, message) for local delivery,
    `entries` what would have been queued: (queue id, envelope, recipients
    with their routes, message).
    """

    def __init__(self) -> None:
        self.copies: list[tuple[list[str], StoredMessage]] = []
        self.entries: list[NewEntry] = []

    def deliver_all(self, copies: Sequence[tuple[Sequence[str], StoredMessage]]) -> Deferred[list[str]]:
        self.copies.extend((list(addresses), message) for addresses, message in copies)
        return succeed([])

    async def add(self, entries: Sequence[NewEntry]) -> None:
        self.entries.extend(entries)

    def remove(self, queue_id: str) -> Deferred[None]:
        self.entries = [entry for entry in self.entries if entry[0] != queue_id]
        return succeed(None)

    def release(self, queue_ids: Sequence[str]) -> None:
        pass
