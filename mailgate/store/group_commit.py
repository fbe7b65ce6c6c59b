"""Group commit: one blocking batch at a time, and whatever arrives meanwhile goes in the next.

Durable writes pay for a journal commit, whose cost hardly depends on how
many files it covers. Running one batch at a time in the disk thread pool,
and gathering every request that arrives while it runs into the next one,
makes concurrent transactions share commits under load, while a request
arriving alone is still committed at once (no timer, no added latency).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

Job = TypeVar("Job")
# A batch function gets the jobs and returns, per job, its result or the exception it met.
BatchFunction = Callable[[Sequence[Any]], Sequence[Any]]


class Batcher(Generic[Job]):
    """Runs `batch_function` over queued jobs in a thread, one batch in flight."""

    def __init__(self, run_blocking: Callable[..., Deferred], batch_function: BatchFunction) -> None:
        self._run = run_blocking
        self._batch_function = batch_function
        self._pending: list[tuple[Job, Deferred]] = []
        self._running = False

    def submit(self, job: Job) -> Deferred:
        """Fires with the job's result once its batch is done (errback: its exception)."""
        done: Deferred = Deferred()
        self._pending.append((job, done))
        if not self._running:
            self._run_next()
        return done

    def _run_next(self) -> None:
        batch, self._pending = self._pending, []
        self._running = True
        d = self._run(self._batch_function, [job for job, _ in batch])
        d.addBoth(self._finished, [done for _, done in batch])

    def _finished(self, results: Any, waiting: list[Deferred]) -> None:
        self._running = False
        if isinstance(results, Failure):
            results = [results.value] * len(waiting)
        for done, result in zip(waiting, results):
            if isinstance(result, BaseException):
                done.errback(Failure(result))
            else:
                done.callback(result)
        if self._pending:
            self._run_next()
