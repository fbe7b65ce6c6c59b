"""Periodic work that outlives its errors: a LoopingCall whose work may fail without ending it.

A LoopingCall stops for good at the first exception its function raises
(or the first Deferred it returns that fails): one EMFILE while listing the
queue's control/ directory ended the loop that serves `mailgate queue
flush|delete`, until a restart. Here a failed run is logged, and the loop
goes on. One line when the failures start, none while the same trouble
lasts (not a traceback a second), one when a run succeeds again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class Periodic:
    """Runs `work` every `interval_seconds` on `clock`, whatever it raises."""

    def __init__(self, name: str, work: Callable[[], Any], clock: IReactorTime, interval_seconds: float) -> None:
        self.name, self._work, self._interval = name, work, interval_seconds
        self._loop = LoopingCall(self._run)
        self._loop.clock = clock
        self.failures = 0  # consecutive failed runs

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self, now: bool = False) -> None:
        self._loop.start(self._interval, now=now).addErrback(self._ended)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _run(self) -> Deferred | None:
        try:
            result = self._work()
        except Exception as error:  # noqa: BLE001 - the loop must outlive anything its work meets
            self._failed(error)
            return None
        if isinstance(result, Deferred):
            return result.addCallbacks(self._succeeded, lambda failure: self._failed(failure.value))
        self._succeeded(result)
        return None

    def _succeeded(self, result: object) -> None:
        if self.failures:
            log.info("{name}: working again after {count} failed run(s)", name=self.name, count=self.failures)
        self.failures = 0

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            log.error("{name}: failed: {error}; trying again every {interval:g} s",
                      name=self.name, error=f"{type(error).__name__}: {error}", interval=self._interval)

    def _ended(self, failure: Failure) -> None:
        """Not reached while _run catches everything; a loop that ends anyway says so."""
        log.failure("{name}: stopped", failure, name=self.name)
