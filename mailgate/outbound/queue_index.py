"""What is queued, in memory: each entry's sender, age, pending recipients, last error and hold.

The status page and the queue metrics read this, never the spool: a scrape
or a page costs no disk access however long the queue. The Spooler keeps it
from what it writes (new entries, saved states, removals); entries resumed
at start-up are known by id only until their next attempt is recorded,
since start-up reads no entry (mailgate.outbound.scheduler).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from mailgate.outbound.entry import QueuedMessage


@dataclass(frozen=True, slots=True)
class Summary:
    """One queued message as the operator sees it."""

    queue_id: str
    sender: str
    arrived: float
    recipients: tuple[tuple[str, str], ...]  # (address, destination) of each pending recipient
    attempts: int
    next_attempt: float
    last_error: str | None
    held: bool

    @property
    def destinations(self) -> frozenset[str]:
        return frozenset(destination for _, destination in self.recipients)


def destination(address: str, route: str) -> str:
    """Where a recipient waits to go: its domain for MX delivery, else its route (`smtp:HOST:PORT`, `webhook:NAME`)."""
    if route == "mx":
        return address.rpartition("@")[2]
    return route


class QueueIndex:
    """The queue's entries by id, by destination and by age."""

    def __init__(self) -> None:
        self._entries: dict[str, Summary] = {}
        self._unread: set[str] = set()  # resumed at start-up, not attempted since
        self._members: dict[str, dict[str, None]] = {}  # destination -> ids (an ordered set)
        self._by_arrival: list[tuple[float, str]] = []  # a heap; stale items are skipped

    def __len__(self) -> int:
        return len(self._entries) + len(self._unread)

    @property
    def unread(self) -> int:
        """Entries resumed at start-up whose details are not known yet."""
        return len(self._unread)

    def resumed(self, queue_ids: Iterable[str]) -> None:
        self._unread.update(queue_id for queue_id in queue_ids if queue_id not in self._entries)

    def note(self, entry: QueuedMessage) -> None:
        """An entry as just written: new, or after an attempt, a hold or a release."""
        recipients = tuple((r.address, destination(r.address, r.route)) for r in entry.pending())
        if not recipients:
            return self.discard(entry.id)
        summary = Summary(entry.id, entry.sender, entry.arrived, recipients, entry.attempts, entry.next_attempt,
                          entry.last_error, entry.held)
        old = self._entries.get(entry.id)
        self._unread.discard(entry.id)
        self._entries[entry.id] = summary
        if old is None:
            heapq.heappush(self._by_arrival, (summary.arrived, entry.id))
        for gone in (old.destinations - summary.destinations) if old is not None else ():
            self._leave(gone, entry.id)
        for destination_ in summary.destinations:
            self._members.setdefault(destination_, {})[entry.id] = None

    def discard(self, queue_id: str) -> None:
        """Gone from the queue: delivered, bounced, deleted or set aside."""
        self._unread.discard(queue_id)
        old = self._entries.pop(queue_id, None)
        if old is not None:
            for destination_ in old.destinations:
                self._leave(destination_, queue_id)

    def _leave(self, destination_: str, queue_id: str) -> None:
        members = self._members.get(destination_)
        if members is not None:
            members.pop(queue_id, None)
            if not members:
                del self._members[destination_]

    def get(self, queue_id: str) -> Summary | None:
        return self._entries.get(queue_id)

    def oldest_arrival(self) -> float | None:
        """When the oldest known entry arrived; None with nothing known queued."""
        heap = self._by_arrival
        while heap and heap[0][1] not in self._entries:
            heapq.heappop(heap)
        if len(heap) > 4 * len(self._entries) + 64:  # many stale items: rebuild once, not on every call
            self._by_arrival = heap = [(s.arrived, s.queue_id) for s in self._entries.values()]
            heapq.heapify(heap)
        return heap[0][0] if heap else None

    def destination_counts(self, top: int) -> tuple[list[tuple[str, int]], int]:
        """The `top` destinations with most messages waiting, most first, and the messages of all the others."""
        counts = [(destination_, len(members)) for destination_, members in self._members.items()]
        biggest = heapq.nsmallest(top, counts, key=lambda item: (-item[1], item[0]))  # ties by name: stable
        return biggest, sum(count for _, count in counts) - sum(count for _, count in biggest)

    def oldest_for(self, destination_: str, limit: int) -> list[Summary]:
        """The `limit` oldest entries waiting for one destination, oldest first."""
        ids = self._members.get(destination_, {})
        entries = (self._entries[queue_id] for queue_id in ids)
        return heapq.nsmallest(limit, entries, key=lambda summary: summary.arrived)
