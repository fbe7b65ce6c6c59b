"""With server.workers > 1, the `mailgate queue` requests across every worker's part of the spool.

Each worker attempts its own part of the spool (mailgate.core.queue_ids),
and only that worker may change an entry of it: an attempt in flight saves
its entry when it ends, so a delete made by another process would be
undone. Worker 0 lists the CLI's requests (mailgate.outbound.control) as
a single process does, through an AllParts in place of its scheduler:
what is in its own part it does itself; for an entry of another part it
sends the request through the master to that worker (`C action id token`)
and answers the CLI once that worker says it is done (`D token`); a flush
goes to every worker. A worker that is down meanwhile is asked when it is
back (the master keeps the lines), so a request never reports done before
it is carried out.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.defer import Deferred, succeed

from mailgate.core.queue_ids import part_of
from mailgate.limits.anvil import LineLink
from mailgate.outbound.scheduler import Scheduler

CONTROL = b"C"  # worker 0 -> the master -> a worker (or every other): carry out `action [id token]`
DONE = b"D"  # that worker -> the master -> worker 0: the request with this token is carried out
FLUSH = "flush"
ON_ONE_ENTRY = ("delete", "hold", "release")  # the Scheduler's methods of those names carry them out


class AllParts:
    """What control.serve_requests needs of a scheduler, for the whole spool: see the module docstring."""

    def __init__(self, scheduler: Scheduler, link: LineLink, index: int, parts: int) -> None:
        self._scheduler, self._link = scheduler, link
        self._index, self._parts = index, parts
        self.store = scheduler.store
        self._tokens = itertools.count(1)
        self._waiting: dict[str, Deferred[None]] = {}

    def entry_ids(self) -> Deferred[list[str]]:
        """Every entry of every part (one spool): `queue delete --all` asks each one's worker."""
        return self._scheduler.entry_ids()

    def flush(self) -> None:
        self._scheduler.flush()
        self._link.send(CONTROL, FLUSH)

    def delete(self, queue_id: str) -> Deferred[Any]:
        return self._act("delete", queue_id)

    def hold(self, queue_id: str) -> Deferred[Any]:
        return self._act("hold", queue_id)

    def release(self, queue_id: str) -> Deferred[Any]:
        return self._act("release", queue_id)

    def _act(self, action: str, queue_id: str) -> Deferred[Any]:
        if part_of(queue_id, self._parts) == self._index:
            return _on_one_entry(self._scheduler, action, queue_id)
        token = str(next(self._tokens))
        done: Deferred[None] = Deferred()
        self._waiting[token] = done
        if not self._link.send(CONTROL, action, queue_id, token):  # the master has gone: so will this worker
            del self._waiting[token]
            return succeed(None)
        return done

    def done(self, token: str) -> None:
        """A worker carried out the request with this token."""
        waiting = self._waiting.pop(token, None)
        if waiting is not None:
            waiting.callback(None)


def carry_out(scheduler: Scheduler, link: LineLink, fields: list[str]) -> None:
    """A request worker 0 passed on (see the module docstring): flush, or act on one entry of this
    worker's part and say so when done."""
    action = fields[0]
    if action == FLUSH:
        scheduler.flush()
        return
    queue_id, token = fields[1], fields[2]
    _on_one_entry(scheduler, action, queue_id).addBoth(lambda _: link.send(DONE, token))


def _on_one_entry(scheduler: Scheduler, action: str, queue_id: str) -> Deferred[Any]:
    if action not in ON_ONE_ENTRY:  # a line this version does not know: nothing to carry out
        return succeed(None)
    done: Deferred[Any] = getattr(scheduler, action)(queue_id)
    return done
