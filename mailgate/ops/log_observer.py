"""mailgate's twistd log observer: Twisted's own noise left out, and `log.format` text or one JSON object per line.

twistd asks the application for an ILogObserver component before it falls
back to its own (but after a `--logger` given on its command line): the
gateway service sets this observer there, writing where twistd would
(`--logfile`, stdout with `-n`, `--syslog`), so `[log]` works with any of
twistd's options. See docs/operations.md, "Logs".
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from mailgate.config import LogConfig
from mailgate.ops.log_text import classic_line, event_text
from mailgate.ops.turn_writer import TurnWriter

# Lines Twisted logs for itself that tell a mail operator nothing.
NOISE_FORMATS = frozenset({
    "Starting factory {factory!r}", "Stopping factory {factory!r}",
    "Starting protocol {protocol!r}", "Stopping protocol {protocol!r}",
})
NOISE_TEXT = re.compile(
    r"\(\w+ Port \S+ Closed\)|.+ starting on \S+|Resolver (?:added|removed) .+|.+ changed, reparsing"
)
LEGACY_KEYS = frozenset({"message", "system", "time", "isError", "format", "why", "failure"})


def is_noise(event: Mapping[str, Any]) -> bool:
    """Twisted's "Starting factory ...", "(TCP Port 25 Closed)", "Resolver added ..." and the like."""
    if event.get("log_format") in NOISE_FORMATS:
        return True
    if event.get("log_namespace") != "log_legacy" or event.get("isError"):
        return False
    return NOISE_TEXT.fullmatch(str(event.get("log_text", ""))) is not None


def json_line(event: Mapping[str, Any]) -> str:
    """One flat JSON object: time, level, event, message, then the event's own fields."""
    level = event.get("log_level")
    name = event.get("event")
    line: dict[str, Any] = {
        "time": _iso(event.get("log_time")),
        "level": getattr(level, "name", "info"),
        "event": name if isinstance(name, str) else str(event.get("log_namespace", "log")),
        "message": event_text(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in LEGACY_KEYS or key in line:
            continue
        line[key] = value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    return json.dumps(line, ensure_ascii=False, default=str) + "\n"


def _iso(seconds: object) -> str:
    moment = datetime.fromtimestamp(seconds if isinstance(seconds, (int, float)) else 0, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@implementer(ILogObserver)
class GatewayLogObserver:
    """Leaves out Twisted's noise (unless `log.twisted_noise`), then writes text or JSON.

    `settings` may be replaced (a reload): the next event uses the new one.
    `out` is a file; without one (syslog) the events go to `fallback`.
    """

    def __init__(self, settings: LogConfig, out: IO[str] | None = None, fallback: Any = None) -> None:
        self.settings = settings
        self._text = fallback if out is None else FileLogObserver(out, classic_line)  # as textFileLogObserver
        self._json = self._text if out is None else FileLogObserver(out, json_line)

    def __call__(self, event: dict[str, Any]) -> None:
        settings = self.settings
        if not settings.twisted_noise and is_noise(event):
            return
        (self._json if settings.format == "json" else self._text)(event)


def for_twistd(options: Mapping[str, Any], settings: LogConfig) -> GatewayLogObserver | None:
    """The observer for twistd's own log options, or None when `--logger` chose one (twistd's wins)."""
    if options.get("logger"):
        return None
    if options.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        legacy = SyslogObserver(options.get("prefix") or "twisted").emit
        return GatewayLogObserver(settings, fallback=LegacyLogObserverWrapper(cast(Any, legacy)))
    from twisted.internet import reactor  # twistd installed its reactor while reading its options

    return GatewayLogObserver(settings, cast(IO[str], TurnWriter(twistd_destination(options), reactor)))


def twistd_destination(options: Mapping[str, Any]) -> IO[str]:
    """Where twistd logs (twisted.scripts._twistd_unix.UnixAppLogger): stdout or a rotated log file."""
    name = options.get("logfile") or ""
    if name == "-" or (options.get("nodaemon") and not name):
        return sys.stdout
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # as twistd: SIGUSR1 rotates the file

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return cast(IO[str], log_file)  # a text file to FileLogObserver: it has write() and flush()
