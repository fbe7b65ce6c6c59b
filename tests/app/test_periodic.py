"""Periodic: a loop that outlives its errors, logging one line per streak of failures."""

from __future__ import annotations

import errno

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mailgate.app.periodic import Periodic


class Work:
    """Fails while `error` is set; counts its runs."""

    def __init__(self) -> None:
        self.runs, self.error = 0, None

    def __call__(self) -> None:
        self.runs += 1
        if self.error is not None:
            raise self.error


class PeriodicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.work = Clock(), Work()
        self.loop = Periodic("queue requests", self.work, self.clock, 1.0)
        self.loop.start()
        self.addCleanup(self.loop.stop)

    def test_an_error_neither_stops_the_loop_nor_floods_the_log(self) -> None:
        """EMFILE for a minute: the loop keeps running, one line says so, one says it is over."""
        self.work.error = OSError(errno.EMFILE, "Too many open files")
        with capturedLogs() as events:
            self.clock.pump([1.0] * 60)
            self.work.error = None
            self.clock.advance(1.0)
            self.clock.advance(1.0)
        self.assertEqual(self.work.runs, 62)
        self.assertTrue(self.loop.running)
        self.assertEqual([formatEvent(event) for event in events], [
            "queue requests: failed: OSError: [Errno 24] Too many open files; trying again every 1 s",
            "queue requests: working again after 60 failed run(s)",
        ])
        self.assertEqual([event for event in events if "log_failure" in event], [])

    def test_a_new_streak_is_logged_again(self) -> None:
        with capturedLogs() as events:
            for error in (ValueError("one"), None, ValueError("two"), None):
                self.work.error = error
                self.clock.advance(1.0)
        self.assertEqual(len(events), 4)
        self.assertIn("ValueError: two", formatEvent(events[2]))

    def test_a_failing_deferred_does_not_stop_it_either(self) -> None:
        answers = [fail(OSError(errno.ENFILE, "Too many open files in system")), succeed(None)]
        loop = Periodic("deferred work", lambda: answers.pop(0) if answers else None, self.clock, 5.0)
        with capturedLogs() as events:
            loop.start()
            self.clock.pump([5.0, 5.0, 5.0])
        self.assertTrue(loop.running)
        self.assertEqual([formatEvent(e).split(":")[1].strip() for e in events], ["failed", "working again after 1 failed run(s)"])
        loop.stop()

    def test_a_deferred_in_progress_is_waited_for(self) -> None:
        pending: Deferred[None] = Deferred()
        calls = []
        loop = Periodic("slow work", lambda: calls.append(1) or pending, self.clock, 1.0)
        loop.start()
        self.clock.pump([1.0] * 5)
        self.assertEqual(len(calls), 1)  # LoopingCall waits; no pile-up of runs
        pending.callback(None)
        self.clock.advance(1.0)
        self.assertEqual(len(calls), 2)
        loop.stop()
