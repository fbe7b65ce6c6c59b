"""Listening ports that stop accepting for a while when the process runs out of descriptors.

Twisted's tcp.Port (read in 26.10) meets EMFILE by closing a descriptor it
keeps in reserve, accepting the waiting connections and closing each at
once, then reopening the reserve. When the reserve cannot be reopened (a
thread took the slot it freed), or the error is ENFILE, ENOBUFS or ENOMEM,
it only logs and returns: the listening socket is still readable, so the
reactor calls accept() again at once. Measured here: 44,000 failed accepts,
and as many log lines, a second, on a whole core, for as long as the
shortage lasts, starving the sessions that could free descriptors.

A port given to `pause_on_exhaustion` stops reading instead: 0.1 s, doubling
up to 5 s while accept() keeps failing so. Connections wait in the kernel's
backlog meanwhile. One log line marks the start of a shortage and one its
end. (Capping connections and keeping descriptors in reserve for the
listeners is another matter, not done here.)
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
FIRST_PAUSE_SECONDS = 0.1
LONGEST_PAUSE_SECONDS = 5.0

log = Logger()


class _WatchedSocket:
    """The listening socket, seen through; remembers an accept() that failed for want of resources."""

    def __init__(self, listening: Any) -> None:
        self._listening = listening
        self.shortage: OSError | None = None

    def accept(self) -> Any:
        try:
            return self._listening.accept()
        except OSError as error:
            if error.errno in RESOURCE_ERRORS:
                self.shortage = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listening, name)


class AcceptBackoff:
    """Wraps one listening port's doRead (see the module docstring)."""

    def __init__(self, port: Any, clock: IReactorTime, name: str) -> None:
        self._port, self._clock, self._name = port, clock, name
        self._socket = _WatchedSocket(port.socket)
        port.socket = self._socket
        self._read = port.doRead
        port.doRead = self.doRead
        self.pause_seconds = 0.0  # the pause under way or last taken; 0 while accepting
        self._short_since = 0.0
        self._timer: IDelayedCall | None = None

    def doRead(self) -> Any:
        self._socket.shortage = None
        why = self._read()
        if self._socket.shortage is not None:
            self._pause(self._socket.shortage)
        elif self.pause_seconds:
            log.info("listen {name}: accepting again, after {seconds:.1f} s short of descriptors",
                     name=self._name, seconds=self._clock.seconds() - self._short_since)
            self.pause_seconds = 0.0
        return why

    def stop(self) -> None:
        """Drop a pending resume (the port is closing)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _pause(self, shortage: OSError) -> None:
        if not self.pause_seconds:
            self._short_since = self._clock.seconds()
            log.warn("listen {name}: cannot accept: {error}; pausing accepts, at most {longest:g} s at a time",
                     name=self._name, error=os.strerror(shortage.errno or 0), longest=LONGEST_PAUSE_SECONDS)
        self.pause_seconds = min(max(self.pause_seconds * 2, FIRST_PAUSE_SECONDS), LONGEST_PAUSE_SECONDS)
        self._port.stopReading()
        self.stop()
        self._timer = self._clock.callLater(self.pause_seconds, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._port.connected and not getattr(self._port, "disconnecting", False):
            self._port.startReading()


def pause_on_exhaustion(port: Any, clock: IReactorTime, name: str) -> AcceptBackoff | None:
    """Install the backoff on a listening port that accepts from a socket (tcp, unix,
    systemd, ...); None for any other kind, which is left as it is."""
    if not (hasattr(port, "socket") and hasattr(port, "doRead") and hasattr(port, "stopReading")):
        return None
    return AcceptBackoff(port, clock, name)
