"""SIGTERM and SIGINT stop the reactor once: a second one while it stops is not an error.

Twisted's handler calls reactor.stop() for each signal, and a second call
while the reactor is stopping raises ReactorNotRunning, logged as an
unhandled error with its traceback. A second SIGTERM is ordinary:
systemd's default KillMode signals every process of the unit, so a worker
hears it from systemd and again from its master, and an impatient
operator sends it twice. Twisted's handler still takes the first (its log
line, and the exit status twistd gives a process a signal stopped).
"""

from __future__ import annotations

import signal
from typing import Any


def stop_once_on_signals(reactor: Any) -> None:
    """Wrap the reactor's SIGTERM/SIGINT handlers once it runs (it installs them as it starts,
    after the services' startService)."""
    reactor.callWhenRunning(_wrap_handlers, reactor)


def _wrap_handlers(reactor: Any) -> None:
    stopping = [False]
    reactor.addSystemEventTrigger("before", "shutdown", stopping.__setitem__, 0, True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous = signal.getsignal(signum)
            if callable(previous):
                signal.signal(signum, _once(previous, stopping))
        except ValueError:  # not the main thread (a test driving the service): no signals here
            return


def _once(previous: Any, stopping: list[bool]) -> Any:
    def on_signal(signum: int, frame: object) -> None:
        if not stopping[0]:
            stopping[0] = True
            previous(signum, frame)
    return on_signal
