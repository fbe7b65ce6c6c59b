"""The durable outbound queue: one message file and one envelope file per queued message.

Layout under `<state_dir>/queue/`:

    msg/<id>    the message, LF line ends, trace headers included; never rewritten
    env/<id>    JSON: sender, arrival, attempts and every recipient's state, and
                the message's length and SHA-256; its mtime is the next attempt
                (as Postfix dates deferred files)
    tmp/        files being written; anything here after a crash is garbage
    control/    requests from `mailgate queue flush|delete` to the running server
    corrupt/    damaged entries, set aside (mailgate.outbound.corrupt)
    lock        held (flock) by the running server, so the CLI knows to ask it

A message is queued when its env/ file is renamed into place, after the
message file and both directories are fsynced; only then is the client told
250. State changes rewrite env/<id> the same way (temp, fsync, rename), so a
crash leaves the old state or the new, never half of one: at worst one
recipient is tried again. An entry that cannot be read, or whose message
is missing or not the one queued (its length and checksum are checked
before each attempt), is DamagedEntry: it is set aside in corrupt/, never
retried and never relayed cut short. Every function here blocks on the
disk: callers run them in a thread pool.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from typing import Callable, Iterable, Iterator, Sequence

from mailgate.outbound.corrupt import CorruptDirectory
from mailgate.outbound.entry import (
    DELIVERED, FAILED, MISSING_MESSAGE, PENDING, DamagedEntry, QueuedMessage, RecipientState,
)
from mailgate.store.durable import sync_paths, unlink_quietly, write_durably
from mailgate.store.maildir_writer import StoredMessage

__all__ = ["DELIVERED", "FAILED", "PENDING", "DamagedEntry", "QueueStore", "QueuedMessage", "RecipientState"]


class QueueStore:
    """The spool directory; see the module docstring for the layout."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._msg = os.path.join(directory, "msg")
        self._env = os.path.join(directory, "env")
        self._tmp = os.path.join(directory, "tmp")
        self._control = os.path.join(directory, "control")
        self.corrupt = CorruptDirectory(os.path.join(directory, "corrupt"))
        self._lock_fd: int | None = None

    def prepare(self) -> list[tuple[str, str]]:
        """Create the directories and clear what a crash left half-written; return the
        (id, reason) of each entry set aside as damaged."""
        for path in (self._msg, self._env, self._tmp, self._control):
            os.makedirs(path, mode=0o700, exist_ok=True)
        for name in os.listdir(self._tmp):
            unlink_quietly(os.path.join(self._tmp, name))
        queued, stored = set(os.listdir(self._env)), set(os.listdir(self._msg))
        for name in stored - queued:  # never acknowledged: its env/ never landed
            unlink_quietly(os.path.join(self._msg, name))
        # add_batch renames msg/ before env/ and remove_batch unlinks env/ first, so
        # an envelope without its message is damage: kept for the operator, not deleted.
        missing = sorted(queued - stored)
        for name in missing:
            self.set_aside(name, MISSING_MESSAGE)
        return [(name, MISSING_MESSAGE) for name in missing]

    def message_path(self, queue_id: str) -> str:
        return os.path.join(self._msg, queue_id)

    def add(self, entry: QueuedMessage, message: StoredMessage) -> None:
        """Queue a new message durably (see the module docstring)."""
        _raise_first(self.add_batch([[(entry, message)]]))

    def save(self, entry: QueuedMessage) -> None:
        """Replace an entry's state atomically and durably."""
        _raise_first(self.save_batch([entry]))

    def remove(self, queue_id: str) -> bool:
        """Drop an entry; False if it was already gone."""
        [result] = self.remove_batch([queue_id])
        if isinstance(result, BaseException):
            raise result
        return result

    def add_batch(self, jobs: Sequence[Sequence[tuple[QueuedMessage, StoredMessage]]]) -> list[BaseException | None]:
        """Queue many transactions' messages with one group commit: every file
        is written, one sync makes them durable, they are renamed into msg/
        and env/, and a second sync makes the names durable before anyone
        hears 250. A job is one transaction: all its entries land or none."""
        writes = []
        for entries in jobs:
            for entry, message in entries:
                entry.message_size, entry.message_lines, entry.message_sha256 = _fingerprint(
                    [message.transit_header, *message.body])
            writes.append([
                write
                for entry, message in entries
                for write in (
                    (self._tmp_path(entry.id, ".msg"), self.message_path(entry.id),
                     [message.transit_header, *message.body], None),
                    self._env_write(entry),
                )
            ])
        return _commit(writes, {self._msg, self._env})

    def save_batch(self, entries: Sequence[QueuedMessage]) -> list[BaseException | None]:
        """Replace many entries' state with one group commit."""
        writes = [[self._env_write(entry)] for entry in entries]
        return _commit(writes, {self._env})

    def remove_batch(self, queue_ids: Sequence[str]) -> list[BaseException | bool]:
        """Drop entries: env/ first, synced, then msg/, so a crash in between
        leaves an orphan message that prepare() cleans, never a live entry
        without its message."""
        results: list[BaseException | bool] = []
        for queue_id in queue_ids:
            try:
                os.unlink(os.path.join(self._env, queue_id))
                results.append(True)
            except FileNotFoundError:
                results.append(self._remove_set_aside(queue_id))
            except OSError as exc:
                results.append(exc)
        try:
            sync_paths([self._env])
        except OSError as exc:
            return [exc] * len(queue_ids)
        for queue_id, result in zip(queue_ids, results):
            if result is True:
                unlink_quietly(self.message_path(queue_id))
        return results

    def _remove_set_aside(self, queue_id: str) -> BaseException | bool:
        """`queue delete` of an entry in corrupt/: False if there is none there either."""
        try:
            return self.corrupt.remove(queue_id)
        except OSError as exc:
            return exc

    def _env_write(self, entry: QueuedMessage) -> Write:
        """An env/ file whose mtime is its next attempt: start-up reads dates, not files."""
        tmp = self._tmp_path(entry.id, ".env")
        return (tmp, os.path.join(self._env, entry.id), [entry.to_json()], entry.next_attempt)

    def _tmp_path(self, queue_id: str, suffix: str) -> str:
        return os.path.join(self._tmp, queue_id + suffix)

    def load(self, queue_id: str) -> QueuedMessage | None:
        """The entry, or None if it is gone (delivered, or deleted by the CLI);
        DamagedEntry if its envelope cannot be read."""
        try:
            with open(os.path.join(self._env, queue_id), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return QueuedMessage.from_json(data, queue_id)

    def load_checked(self, queue_id: str) -> QueuedMessage | None:
        """load(), with the message checked against its length and checksum (before an attempt)."""
        entry = self.load(queue_id)
        if entry is not None:
            self.check_message(entry)
        return entry

    def check_message(self, entry: QueuedMessage, checksum: bool = True) -> None:
        """DamagedEntry if msg/<id> is missing or not as queued. Entries queued by 0.1
        recorded no length: for them only a missing message counts."""
        path = self.message_path(entry.id)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise DamagedEntry(MISSING_MESSAGE) from None
        if entry.message_size is not None and size != entry.message_size:
            raise DamagedEntry(f"message file has {size} bytes, {entry.message_size} were queued")
        if checksum and entry.message_sha256 is not None and _file_sha256(path) != entry.message_sha256:
            raise DamagedEntry("message file does not match its SHA-256 checksum")

    def set_aside(self, queue_id: str, reason: str) -> bool:
        """Move a damaged entry's files to corrupt/, with the reason; False if it was gone."""
        return self.corrupt.set_aside(queue_id, reason, os.path.join(self._env, queue_id),
                                      self.message_path(queue_id))

    def exists(self, queue_id: str) -> bool:
        """Queued, damaged or not, or set aside in corrupt/."""
        return os.path.lexists(os.path.join(self._env, queue_id)) or queue_id in self.corrupt.ids()

    def ids(self) -> list[str]:
        try:
            return os.listdir(self._env)
        except FileNotFoundError:  # nothing was ever queued
            return []

    def next_attempts(self, wanted: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        """Every entry's id (those `wanted`, a worker's part) and next attempt, from env/ mtimes alone.

        Start-up reads no entry: 100,000 deferred messages cost a directory
        listing and one stat each, not 100,000 file reads that leave the
        disk busy after the listener is already accepting mail.
        """
        found = []
        try:
            with os.scandir(self._env) as listing:
                for item in listing:
                    if wanted is not None and not wanted(item.name):
                        continue
                    try:
                        found.append((item.name, item.stat().st_mtime))
                    except FileNotFoundError:  # removed meanwhile (the CLI)
                        continue
        except FileNotFoundError:  # nothing was ever queued
            pass
        return found

    def entries(self) -> Iterator[QueuedMessage]:
        """Every entry that can be read (damaged ones are skipped), read from disk."""
        for queue_id in self.ids():
            try:
                entry = self.load(queue_id)
            except DamagedEntry:
                continue
            if entry is not None:
                yield entry


    # --- the running server's lock and the CLI's requests ------------------

    def lock(self) -> bool:
        """Take the spool for this process; False if a running server has it."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def request(self, action: str, queue_id: str = "") -> str:
        """File a request for the running server; returns its path, gone once served."""
        path = os.path.join(self._control, f"{action}.{queue_id}.{os.getpid()}.{time.time_ns()}")
        write_durably(path, [])
        return path

    def requests(self) -> list[tuple[str, str, str]]:
        """(path, action, queue id) of every request waiting, oldest first."""
        try:
            names = sorted(os.listdir(self._control), key=lambda n: n.rsplit(".", 1)[-1])
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            action, _, rest = name.partition(".")
            found.append((os.path.join(self._control, name), action, rest.partition(".")[0]))
        return found


Write = tuple[str, str, list[bytes], "float | None"]  # temp path, final path, content, mtime
def _fingerprint(chunks: Iterable[bytes]) -> tuple[int, int, str]:
    """Length, line count and SHA-256 of the message file these chunks make."""
    digest, size, lines = hashlib.sha256(), 0, 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        lines += chunk.count(b"\n")
    return size, lines, digest.hexdigest()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _commit(jobs: Sequence[list[Write]], directories: set[str]) -> list[BaseException | None]:
    """Write each job's files, sync once, rename them in order, sync the
    directories once; per job, None or the error that stopped it. A job
    that fails leaves no temp file behind (it would hold the space, and
    block its next try on O_EXCL)."""
    results: list[BaseException | None] = [None] * len(jobs)
    for index, writes in enumerate(jobs):
        try:
            for tmp, _, chunks, mtime in writes:
                unlink_quietly(tmp)  # a leftover from an earlier failure
                write_durably(tmp, chunks, fsync=False, mtime=mtime)
        except OSError as exc:
            results[index] = exc
            for tmp, *_ in writes:
                unlink_quietly(tmp)
    written = [writes for writes, result in zip(jobs, results) if result is None]
    try:
        sync_paths(tmp for writes in written for tmp, *_ in writes)
        for index, writes in enumerate(jobs):
            if results[index] is None:
                results[index] = _rename_all(writes)
        sync_paths(sorted(directories))
    except OSError as exc:
        for writes in jobs:
            for tmp, *_ in writes:
                unlink_quietly(tmp)
        return [exc] * len(jobs)
    return results


def _rename_all(writes: list[Write]) -> BaseException | None:
    """Rename one job's files in order; on failure undo the new names it made."""
    done: list[str] = []
    try:
        for tmp, final, _, _ in writes:
            os.rename(tmp, final)
            done.append(final)
    except OSError as exc:
        for final in done:
            unlink_quietly(final)
        for tmp, *_ in writes:
            unlink_quietly(tmp)
        return exc
    return None


def _raise_first(results: Sequence[BaseException | None]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result
