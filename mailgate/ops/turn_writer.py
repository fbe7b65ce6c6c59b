"""A log file written once per reactor turn: one write for the lines of a turn, not one per line.

Twisted's FileLogObserver writes and flushes each event: a `write` system
call per line, three lines a relayed message. In the gateway those calls
took 72 µs each (the queue's syncs write the same file system back at the
same time), 0.2 ms of every relayed message with the reactor waiting.
`TurnWriter` keeps a turn's lines and writes them together when the turn
ends (a `callLater(0)`), as the workers' log does (mailgate.app.worker).

Lines come out in the order they were logged, but for lines logged from
another thread (a pool's), which are written at once. While the reactor is
not running (start-up, shutdown: twistd's last lines), and at exit, what
waits is written at once.
"""

from __future__ import annotations

import atexit
import threading
from typing import IO, Any


class TurnWriter:
    """A file-like `write`/`flush` for a FileLogObserver; `out` gets one write (and flush) per turn."""

    def __init__(self, out: IO[str], reactor: Any) -> None:
        self._out, self._reactor = out, reactor
        self._pending: list[str] = []
        self._scheduled = False
        self._main = threading.main_thread()
        atexit.register(self.drain)

    def write(self, text: str) -> None:
        if threading.current_thread() is not self._main:
            self._out.write(text)  # the file's own lock keeps the line whole
            self._out.flush()
            return
        self._pending.append(text)
        if not self._reactor.running:  # no end of turn to wait for (a delayed call may never run)
            self.drain()
        elif not self._scheduled:
            self._scheduled = True
            self._reactor.callLater(0, self.drain)

    def flush(self) -> None:
        """FileLogObserver flushes after every event: the end of the turn does it instead."""

    def drain(self) -> None:
        """Write what waits, now."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        if pending:
            self._out.write("".join(pending))
            self._out.flush()
