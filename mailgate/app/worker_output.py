"""A worker process as the master sees it: its output relayed into the master's log, its end reported.

The relayed lines carry the master's own log namespace (mailgate.app.workers), as when this
lived there: `[mailgate.app.workers#info] worker N: ...` in twistd's text log.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel

from mailgate.ops.log_text import timestamp

if TYPE_CHECKING:
    from mailgate.app.workers import Master  # which starts these

NAMESPACE = "mailgate.app.workers"
log = Logger(namespace=NAMESPACE)

LEVELS = {level.name: level for level in LogLevel.iterconstants()}  # "debug", "info", "warn", "error", "critical"
SYSTEMS = {name: f"{NAMESPACE}#{name}" for name in LEVELS}  # what twistd's text log shows of those events


class WorkerProcess(ProcessProtocol):
    """One running worker: its output relayed into the master's log, its end reported.

    Each line of a worker is one line of the master's log. Where that log
    is twistd's text file (or stdout), the master's own observer writing to
    `Master.log_out`, the lines of a chunk are formatted as that observer
    would and written at once, without an event each through the logging
    system, which cost the master about 25 us a line; with `--syslog` or a
    `--logger`, each line is an event.
    """

    def __init__(self, master: Master, index: int) -> None:
        self._master, self.index = master, index
        self._partial = {1: b"", 2: b""}  # stdout's and stderr's unfinished lines
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """A chunk of a worker's stdout (its log, a reactor turn's lines at a time) or stderr (the
        same kind of line, or a crash's last words): decoded and split once, each line logged."""
        chunk = self._partial.get(childFD, b"") + data
        end = chunk.rfind(b"\n")
        self._partial[childFD] = chunk[end + 1:]
        if end < 0:
            return
        lines = chunk[:end].decode("utf-8", "replace").split("\n")
        out = self._master.log_out
        if out is not None:
            out.write(self._as_logged(lines))
            out.flush()
            return
        emit, index = log.emit, self.index
        for line in lines:
            level, _, text = line.partition(" ")
            if level in LEVELS:
                emit(LEVELS[level], "worker {index}: {text}", index=index, text=text)
            else:
                emit(LogLevel.info, "worker {index}: {text}", index=index, text=line)

    def _as_logged(self, lines: list[str]) -> str:
        """The lines as twistd's text log would write their events (`worker N: text` each), in one go."""
        stamp, index, written = timestamp(time.time()), self.index, []
        for line in lines:
            level, _, text = line.partition(" ")
            if level not in SYSTEMS:
                level, text = "info", line
            written.append(f"{stamp} [{SYSTEMS[level]}] worker {index}: {text}\n")
        return "".join(written)

    def processEnded(self, reason: Any) -> None:
        for childFD, rest in self._partial.items():  # last words without a line end
            if rest:
                self.childDataReceived(childFD, b"\n")
        self._master.worker_ended(self, reason.value)
        self.ended.callback(None)
