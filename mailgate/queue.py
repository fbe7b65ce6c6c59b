"""The durable outbound queue: one message file and one envelope file per queued message.

Layout under `<state_dir>/queue/`:

    msg/<id>    the message, LF line ends, trace headers included; never rewritten
    env/<id>    JSON: sender, arrival, attempts and every recipient's state
    tmp/        files being written; anything here after a crash is garbage
    control/    requests from `mailgate queue flush|delete` to the running server
    lock        held (flock) by the running server, so the CLI knows to ask it

A message is queued when its env/ file is renamed into place, after the
message file and both directories are fsynced; only then is the client told
250. State changes rewrite env/<id> the same way (temp, fsync, rename), so a
crash leaves the old state or the new, never half of one: at worst one
recipient is tried again. Every function here blocks on the disk: callers
run them in a thread pool.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

from mailgate.durable import fsync_dir, unlink_quietly, write_durably
from mailgate.maildir import StoredMessage

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass
class RecipientState:
    address: str
    route: str
    status: str = PENDING
    code: int | None = None  # the last reply's code, for the DSN
    enhanced: str | None = None
    diagnostic: str | None = None  # the last reply's text or our reason
    remote_mta: str | None = None


@dataclass
class QueuedMessage:
    id: str
    sender: str  # "" for the null sender: never bounced to
    arrived: float  # unix seconds
    recipients: list[RecipientState]
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    warned: bool = False  # a delay warning was sent
    extra: dict = field(default_factory=dict)  # room for plugins' bookkeeping

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    def failed(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == FAILED]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "QueuedMessage":
        raw = json.loads(data)
        raw["recipients"] = [RecipientState(**r) for r in raw["recipients"]]
        return cls(**raw)


class QueueStore:
    """The spool directory; see the module docstring for the layout."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._msg = os.path.join(directory, "msg")
        self._env = os.path.join(directory, "env")
        self._tmp = os.path.join(directory, "tmp")
        self._control = os.path.join(directory, "control")
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        """Create the directories and clear what a crash left half-written."""
        for path in (self._msg, self._env, self._tmp, self._control):
            os.makedirs(path, mode=0o700, exist_ok=True)
        for name in os.listdir(self._tmp):
            unlink_quietly(os.path.join(self._tmp, name))
        queued = set(os.listdir(self._env))
        for name in os.listdir(self._msg):
            if name not in queued:  # never acknowledged: its env/ never landed
                unlink_quietly(os.path.join(self._msg, name))

    def message_path(self, queue_id: str) -> str:
        return os.path.join(self._msg, queue_id)

    def add(self, entry: QueuedMessage, message: StoredMessage) -> None:
        """Queue a new message durably (see the module docstring)."""
        tmp_msg = os.path.join(self._tmp, entry.id + ".msg")
        _write_replacing(tmp_msg, self.message_path(entry.id), [message.transit_header, *message.body])
        fsync_dir(self._msg)
        self.save(entry)

    def save(self, entry: QueuedMessage) -> None:
        """Replace an entry's state atomically and durably."""
        tmp_env = os.path.join(self._tmp, entry.id + ".env")
        _write_replacing(tmp_env, os.path.join(self._env, entry.id), [entry.to_json()])
        fsync_dir(self._env)

    def load(self, queue_id: str) -> QueuedMessage | None:
        """The entry, or None if it is gone (delivered, or deleted by the CLI)."""
        try:
            with open(os.path.join(self._env, queue_id), "rb") as handle:
                return QueuedMessage.from_json(handle.read())
        except FileNotFoundError:
            return None

    def remove(self, queue_id: str) -> bool:
        """Drop an entry: env/ first, so a crash in between leaves an orphan
        message that prepare() cleans, never an entry without its message."""
        try:
            os.unlink(os.path.join(self._env, queue_id))
        except FileNotFoundError:
            return False
        fsync_dir(self._env)
        unlink_quietly(self.message_path(queue_id))
        return True

    def ids(self) -> list[str]:
        try:
            return os.listdir(self._env)
        except FileNotFoundError:  # nothing was ever queued
            return []

    def entries(self) -> Iterator[QueuedMessage]:
        """Every entry, read from disk: for start-up and `mailgate queue list`."""
        for queue_id in self.ids():
            entry = self.load(queue_id)
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
        return [(os.path.join(self._control, n), *n.split(".", 2)[:2]) for n in names]


def _write_replacing(tmp: str, target: str, chunks: list[bytes]) -> None:
    """Write `tmp` durably and rename it onto `target`; on failure (a full
    disk) remove `tmp`, so it neither keeps the space nor blocks the next try."""
    unlink_quietly(tmp)  # a leftover from an earlier failure would make O_EXCL fail
    try:
        write_durably(tmp, chunks)
        os.rename(tmp, target)
    except BaseException:
        unlink_quietly(tmp)
        raise
