"""Queue ids: unique within a host, and each in the part of the spool of the worker that made it.

With server.workers > 1 every worker attempts its own part of the one
spool. Which part an entry is in is a pure function of its id
(`part_of`), so every process agrees without a record or a lock: the
master routing a hand-over, a worker resuming its part at start, a worker
started again taking over what its predecessor left. A worker makes ids in
its own part (`transaction_id` skips the counter values that fall in
another, on average one CRC-32 of 16 bytes per worker per message), so the
mail it accepts it delivers itself; ids made from others (a list's copies,
a forward, a bounce) may fall in another part, and go there through the
master (mailgate.app.worker).
"""

from __future__ import annotations

import itertools
import os
import time
import zlib

_ids = itertools.count(1)
_pid = f"{os.getpid():X}"  # not a system call per message; twistd forks after import
_part = (0, 1)  # (this process's part, how many parts): claim_part


def _forked() -> None:
    global _pid
    _pid = f"{os.getpid():X}"


os.register_at_fork(after_in_child=_forked)


def part_of(queue_id: str, parts: int) -> int:
    """The part of the spool (the worker index) an entry belongs to, of `parts`."""
    return zlib.crc32(queue_id.encode()) % parts if parts > 1 else 0


def claim_part(index: int, parts: int) -> None:
    """This process is worker `index` of `parts`: the ids it makes from now on are in its part."""
    global _part
    _part = (index, parts)


def transaction_id() -> str:
    """A short id for logs and the "queued as" reply, unique within a host, in this process's part."""
    index, parts = _part
    while True:
        made = f"{time.time_ns() // 1000:X}{_pid}{next(_ids):X}"
        if part_of(made, parts) == index:
            return made
