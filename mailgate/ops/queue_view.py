"""The queue the status page and the metrics show, with server.workers > 1: every worker's part of it.

Each worker knows its own part of the spool (its QueueIndex), and worker 0
serves the page and /metrics. Once a second each other worker writes a
snapshot of its part (what the page and the gauges show: how many, the
oldest arrival, the biggest destinations with their oldest few messages)
into the metrics directory, and worker 0 reads them and shows the sum
(MergedQueue). Files, like prometheus-client's own for the counters: a
scrape never waits on another process, and a worker that has died keeps
its last figures until the worker started in its place replaces them.
A destination's merged count is what the parts list among their biggest;
one small in every part is counted among "other destinations".
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Protocol

from mailgate.outbound.queue_index import QueueIndex, Summary

Snapshot = dict[str, Any]  # as snapshot() makes it: JSON


class QueueView(Protocol):
    """What the page and the gauges read: a QueueIndex, or a MergedQueue."""

    @property
    def unread(self) -> int: ...
    def __len__(self) -> int: ...
    def oldest_arrival(self) -> float | None: ...
    def destination_counts(self, top: int) -> tuple[list[tuple[str, int]], int]: ...
    def oldest_for(self, destination: str, limit: int) -> list[Summary]: ...


def snapshot(index: QueueIndex, destinations: int, messages: int) -> Snapshot:
    """One part's figures: its `destinations` biggest destinations, with the `messages` oldest of each."""
    biggest, others = index.destination_counts(destinations)
    return {
        "count": len(index), "unread": index.unread, "oldest": index.oldest_arrival(), "others": others,
        "destinations": [[name, count, [_summary_json(s) for s in index.oldest_for(name, messages)]]
                         for name, count in biggest],
    }


def write_snapshot(path: str, figures: Snapshot) -> None:
    """Replace the file at once (a temporary file renamed over it): a reader sees one snapshot or the next."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(figures, handle, separators=(",", ":"))
    os.replace(temporary, path)


def read_snapshots(paths: Iterable[str]) -> list[Snapshot]:
    """The snapshots that exist and can be read (a worker not started yet has none)."""
    found = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                found.append(json.load(handle))
        except (OSError, ValueError):
            continue
    return found


class MergedQueue:
    """This worker's own QueueIndex plus the other workers' snapshots."""

    def __init__(self, own: QueueIndex, others: list[Snapshot]) -> None:
        self._own, self._others = own, others

    @property
    def unread(self) -> int:
        return self._own.unread + sum(int(part["unread"]) for part in self._others)

    def __len__(self) -> int:
        return len(self._own) + sum(int(part["count"]) for part in self._others)

    def oldest_arrival(self) -> float | None:
        known = [part["oldest"] for part in self._others if part["oldest"] is not None]
        own = self._own.oldest_arrival()
        return min([*known, *([own] if own is not None else [])], default=None)

    def destination_counts(self, top: int) -> tuple[list[tuple[str, int]], int]:
        listed, unlisted = self._own.destination_counts(top)
        counts = dict(listed)
        for part in self._others:
            unlisted += int(part["others"])
            for name, count, _ in part["destinations"]:
                counts[name] = counts.get(name, 0) + int(count)
        biggest = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
        return biggest, unlisted + sum(counts.values()) - sum(count for _, count in biggest)

    def oldest_for(self, destination: str, limit: int) -> list[Summary]:
        found = list(self._own.oldest_for(destination, limit))
        for part in self._others:
            for name, _, summaries in part["destinations"]:
                if name == destination:
                    found.extend(_summary(item) for item in summaries)
        return sorted(found, key=lambda summary: summary.arrived)[:limit]


def _summary_json(summary: Summary) -> list[Any]:
    return [summary.queue_id, summary.sender, summary.arrived, [list(r) for r in summary.recipients],
            summary.attempts, summary.next_attempt, summary.last_error, summary.held]


def _summary(item: list[Any]) -> Summary:
    queue_id, sender, arrived, recipients, attempts, next_attempt, last_error, held = item
    return Summary(queue_id, sender, arrived, tuple((address, where) for address, where in recipients), attempts,
                   next_attempt, last_error, held)
