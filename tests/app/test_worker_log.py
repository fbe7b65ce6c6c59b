"""A worker's log lines: written once per reactor turn, relayed by the master line by line, unchanged."""

from __future__ import annotations

import io
import threading
from typing import Any

from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, LogPublisher, Logger, capturedLogs, formatEvent, textFileLogObserver
from twisted.python.failure import Failure

from mailgate.app.worker import LineObserver
from mailgate.app import worker_output
from mailgate.app.worker_output import WorkerProcess


class Turns(Clock):
    running = True


class CountingOut(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def observed() -> tuple[Logger, CountingOut, Turns]:
    out, reactor = CountingOut(), Turns()
    return Logger(observer=LineObserver(out, reactor)), out, reactor


def test_the_lines_of_one_turn_are_written_together_at_its_end() -> None:
    log, out, reactor = observed()
    log.info("one {n}", n=1)
    log.warn("two\nlines")
    assert out.getvalue() == ""
    reactor.advance(0)
    assert out.getvalue() == "info one 1\nwarn two\nwarn lines\n"
    assert out.writes == 1
    log.error("three")
    reactor.advance(0)
    assert out.getvalue().endswith("\nerror three\n") and out.writes == 2


def test_a_failure_is_written_with_its_traceback_each_line_at_its_level() -> None:
    log, out, reactor = observed()
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("delivery {id} crashed", id="Q1")
    reactor.advance(0)
    lines = out.getvalue().splitlines()
    assert lines[0] == "critical delivery Q1 crashed"
    assert "critical Traceback (most recent call last):" in lines
    assert lines[-1] == "critical builtins.ZeroDivisionError: division by zero"


def test_without_a_running_reactor_lines_are_written_at_once_after_any_still_waiting() -> None:
    log, out, reactor = observed()
    log.info("first")
    reactor.running = False  # stopped before its delayed call ran
    log.info("second")
    assert out.getvalue() == "info first\ninfo second\n"
    reactor.advance(0)  # the delayed call, late: nothing twice
    assert out.getvalue() == "info first\ninfo second\n"


def test_a_line_from_another_thread_is_written_at_once() -> None:
    log, out, _ = observed()
    thread = threading.Thread(target=log.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert out.getvalue() == "info from a thread\n"


class Master:
    ended: list[Any] = []
    log_out: io.StringIO | None = None

    def worker_ended(self, process: WorkerProcess, reason: Any) -> None:
        self.ended.append(reason)


def test_the_master_logs_each_line_of_a_chunk_with_its_level_and_worker() -> None:
    process = WorkerProcess(Master(), 1)  # type: ignore[arg-type]
    with capturedLogs() as events:
        process.childDataReceived(1, b"info accepted a\nwarn slow\nerr")
        process.childDataReceived(2, b"Traceback (most recent call last):\n  File")
        process.childDataReceived(1, b"or bad\n")
        process.processEnded(Failure(ProcessTerminated(signal=9)))
    lines = [(event["log_level"], formatEvent(event)) for event in events]
    assert lines == [
        (LogLevel.info, "worker 1: accepted a"),
        (LogLevel.warn, "worker 1: slow"),
        (LogLevel.info, "worker 1: Traceback (most recent call last):"),
        (LogLevel.error, "worker 1: bad"),
        (LogLevel.info, "worker 1:   File"),  # stderr's last words, without a line end
    ]


def test_written_to_the_masters_text_log_directly_the_lines_are_what_its_observer_would_write(
        monkeypatch: Any) -> None:
    """With the master's own text log observer, a chunk is written in one go, each line exactly as
    that observer writes the event `worker N: text` at the same moment."""
    monkeypatch.setattr(worker_output.time, "time", lambda: 1764660000.0)
    chunk = b"info accepted {a}\nwarn slow\ncritical oh no\nno-level-here\n"
    master = Master()
    master.log_out = io.StringIO()
    WorkerProcess(master, 1).childDataReceived(1, chunk)  # type: ignore[arg-type]

    expected, publisher = io.StringIO(), LogPublisher()
    publisher.addObserver(textFileLogObserver(expected))
    with capturedLogs() as events:
        WorkerProcess(Master(), 1).childDataReceived(1, chunk)  # type: ignore[arg-type]
    for event in events:
        publisher({**event, "log_time": 1764660000.0})
    assert master.log_out.getvalue() == expected.getvalue()
    assert expected.getvalue().count("\n") == 4 and "[mailgate.app.workers#warn] worker 1: slow\n" in expected.getvalue()
