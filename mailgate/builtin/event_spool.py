"""The on-disk spool of one event webhook: one file per event, written in group commits off the reactor.

```
<state_dir>/events/<name>/
  evt_<32 hex>   one event: the JSON body to POST, byte for byte; its name is the webhook-id
  tmp/           files being written; what is left here at start-up is garbage
```

An event file is renamed into place only once its data is synced, and the
directory is synced after the renames, so a file there is always whole. The
first 16 hex digits of the name are when the event was spooled (Unix
nanoseconds), so expiry needs no other state. The file's mtime is when it is
next due, as the queue dates its env files: set when it is spooled and moved
on after each failed attempt (not synced: a crash that loses a move only
makes the next attempt early).
"""

from __future__ import annotations

import heapq
import os
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from mailgate.store.durable import fsync_dir, sync_paths, unlink_quietly, write_durably
from mailgate.store.group_commit import Batcher

ID_PREFIX = "evt_"
_EVENT_FILE = re.compile(r"evt_[0-9a-f]{32}")
Blocking = Callable[..., Deferred]
Listing = tuple[list[tuple[float, str]], bool]  # (due time, id) of the earliest due; whether more were left


def new_event_id(now: float) -> str:
    """`evt_`, the spooling time in hex nanoseconds, 64 random bits: unique, and sorted by age."""
    return f"{ID_PREFIX}{int(now * 1e9):016x}{secrets.token_hex(8)}"


def spooled_at(event_id: str) -> float:
    """When the event of this id was spooled, Unix seconds."""
    return int(event_id[len(ID_PREFIX):len(ID_PREFIX) + 16], 16) / 1e9


class EventSpool:
    """The files of one event webhook. Every method returns a Deferred; the disk is touched in `run_blocking`."""

    def __init__(self, directory: str, run_blocking: Blocking) -> None:
        self.directory = directory
        self._tmp = os.path.join(directory, "tmp")
        self._run = run_blocking
        self._adds: Batcher = Batcher(run_blocking, self._add_batch)
        self._moves: Batcher = Batcher(run_blocking, self._move_batch)
        self._removes: Batcher = Batcher(run_blocking, self._remove_batch)
        self._swept = False  # tmp/ emptied of a previous run's garbage (touched by _add_batch alone)

    def path(self, event_id: str) -> str:
        return os.path.join(self.directory, event_id)

    def add(self, event_id: str, body: bytes, now: float) -> Deferred:
        """Fires once the event is on disk for good, due at `now`."""
        return self._adds.submit((event_id, body, now))

    def read(self, event_id: str) -> Deferred:
        """Fires with the body; errback FileNotFoundError if the event is gone."""
        return self._run(_read, self.path(event_id))

    def postpone(self, event_id: str, due: float) -> Deferred:
        return self._moves.submit((event_id, due))

    def remove(self, event_id: str) -> Deferred:
        return self._removes.submit(event_id)

    def list_due(self, known: frozenset[str], limit: int) -> Deferred:
        """The `limit` earliest due events not in `known`, as a Listing.

        One directory listing and one stat per file, whatever their number:
        it is what a sender does when it has room for more than it holds.
        """
        return self._run(_list_due, self.directory, known, limit)

    # --- in the disk thread ----------------------------------------------------

    def _add_batch(self, jobs: Sequence[tuple[str, bytes, float]]) -> list[Any]:
        """Write every job to tmp/, sync them all at once, rename them in, sync the directory."""
        try:
            self._prepare()
        except OSError as error:
            return [error] * len(jobs)
        results: list[Any] = []
        written: list[str] = []
        for event_id, body, now in jobs:
            try:
                write_durably(os.path.join(self._tmp, event_id), [body], fsync=False, mtime=now)
                written.append(event_id)
                results.append(None)
            except OSError as error:
                results.append(error)
        try:
            sync_paths(os.path.join(self._tmp, event_id) for event_id in written)
            for event_id in written:
                os.rename(os.path.join(self._tmp, event_id), self.path(event_id))
            fsync_dir(self.directory)
        except OSError as error:
            for event_id in written:
                unlink_quietly(os.path.join(self._tmp, event_id))
            return [error] * len(jobs)
        return results

    def _prepare(self) -> None:
        os.makedirs(self._tmp, mode=0o700, exist_ok=True)
        if not self._swept:  # adds run one batch at a time, so nothing of ours is being written
            for name in os.listdir(self._tmp):
                unlink_quietly(os.path.join(self._tmp, name))
            self._swept = True

    def _move_batch(self, jobs: Sequence[tuple[str, float]]) -> list[None]:
        for event_id, due in jobs:
            try:
                os.utime(self.path(event_id), (due, due))
            except FileNotFoundError:
                pass  # delivered or dropped meanwhile
        return [None] * len(jobs)

    def _remove_batch(self, event_ids: Sequence[str]) -> list[None]:
        """Unlink, then one directory sync: after a crash a sent event is rarely sent again."""
        for event_id in event_ids:
            unlink_quietly(self.path(event_id))
        fsync_dir(self.directory)
        return [None] * len(event_ids)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _list_due(directory: str, known: frozenset[str], limit: int) -> Listing:
    found: list[tuple[float, str]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return [], False
    for entry in entries:
        if entry.name in known or not _EVENT_FILE.fullmatch(entry.name):
            continue
        try:
            found.append((entry.stat().st_mtime, entry.name))
        except FileNotFoundError:
            continue
    chosen = heapq.nsmallest(limit, found)
    return chosen, len(found) > len(chosen)
