"""The spool's corrupt/ directory, where damaged queue entries are set aside with their reason.

As Postfix's `corrupt` queue: an entry whose envelope cannot be read, or
whose message is missing or not the one that was queued, is never tried
again (every attempt would fail the same way, and a message cut short must
not be relayed) and never deleted behind the operator's back. Its files
move here as they were:

    corrupt/<id>.env      the env/ file, if there was one
    corrupt/<id>.msg      the msg/ file, if there was one
    corrupt/<id>.reason   one line: why it was set aside

`mailgate queue list` shows them, `mailgate queue delete ID` removes them.
Every function here blocks on the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mailgate.store.durable import replace_file, sync_paths, unlink_quietly

ENV, MSG, REASON = ".env", ".msg", ".reason"


@dataclass(frozen=True)
class SetAside:
    """One entry in corrupt/: its id, why it is there, and its envelope file's bytes (None if none)."""

    queue_id: str
    reason: str
    envelope: bytes | None


class CorruptDirectory:
    """`<spool>/corrupt/`; see the module docstring."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def set_aside(self, queue_id: str, reason: str, env_path: str, msg_path: str) -> bool:
        """Move an entry's files here; False if it had none left (deleted meanwhile).

        The env/ file goes last: until it has gone the entry is still queued,
        so a crash half-way leaves it for the next start to set aside again,
        never a message without its envelope in msg/ (prepare() deletes those).
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        reason_path = self._path(queue_id, REASON)
        interrupted = not os.path.exists(msg_path) and os.path.exists(self._path(queue_id, MSG))
        if not interrupted:  # else the first reason stands, not "message file missing"
            replace_file(reason_path, reason.replace("\n", " ").encode() + b"\n")
        moved = False
        for source, suffix in ((msg_path, MSG), (env_path, ENV)):
            try:
                os.rename(source, self._path(queue_id, suffix))
                moved = True
            except FileNotFoundError:
                continue
        if not (moved or interrupted):
            unlink_quietly(reason_path)
        sync_paths([self.directory, os.path.dirname(msg_path), os.path.dirname(env_path)])
        return moved

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted({name.rpartition(".")[0] for name in names if name.endswith((ENV, MSG, REASON))})

    def read(self, queue_id: str) -> SetAside:
        reason = (self._read(queue_id, REASON) or b"(no reason recorded)").decode("utf-8", "replace")
        return SetAside(queue_id, reason.strip(), self._read(queue_id, ENV))

    def remove(self, queue_id: str) -> bool:
        """Delete an entry's files; False if there were none."""
        if queue_id not in self.ids():
            return False
        for suffix in (ENV, MSG, REASON):
            unlink_quietly(self._path(queue_id, suffix))
        sync_paths([self.directory])
        return True

    def _read(self, queue_id: str, suffix: str) -> bytes | None:
        try:
            with open(self._path(queue_id, suffix), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def _path(self, queue_id: str, suffix: str) -> str:
        return os.path.join(self.directory, queue_id + suffix)
