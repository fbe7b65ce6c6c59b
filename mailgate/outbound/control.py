"""The `mailgate queue` requests a running server carries out: flush, delete, delete-all, hold, release.

The CLI files an empty file in the spool's control/ directory
(QueueStore.request) and waits for it to vanish: the server lists them
once a second and removes each only once it is carried out, so that
nothing the CLI does races the server's own writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, DeferredList

from mailgate.store.durable import unlink_quietly

if TYPE_CHECKING:
    from mailgate.outbound.spool import QueueStore


class QueueActions(Protocol):
    """What the requests act on: the Scheduler, or with workers mailgate.app.shared_queue.AllParts."""

    store: QueueStore

    def flush(self) -> None: ...
    def delete(self, queue_id: str) -> Deferred[Any]: ...
    def hold(self, queue_id: str) -> Deferred[Any]: ...
    def release(self, queue_id: str) -> Deferred[Any]: ...
    def entry_ids(self) -> Deferred[list[str]]: ...


def serve_requests(scheduler: QueueActions) -> None:
    """Carry out every request waiting, oldest first."""
    for path, action, queue_id in scheduler.store.requests():
        done: Deferred | None = None
        if action == "flush":
            scheduler.flush()
        elif action == "delete":
            done = scheduler.delete(queue_id)
        elif action == "delete-all":
            done = delete_all(scheduler)
        elif action == "hold":
            done = scheduler.hold(queue_id)
        elif action == "release":
            done = scheduler.release(queue_id)
        if done is None:
            unlink_quietly(path)
        else:
            done.addBoth(_unlink_after, path)


def delete_all(scheduler: QueueActions) -> Deferred:
    """Every entry queued or set aside now (`mailgate queue delete --all`)."""
    listing = scheduler.entry_ids()
    return listing.addCallback(lambda ids: DeferredList([scheduler.delete(i) for i in ids], consumeErrors=True))


def _unlink_after(result: object, path: str) -> object:
    """A request is answered by removing its file, once it is carried out."""
    unlink_quietly(path)
    return result
