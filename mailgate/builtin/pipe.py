"""Built-in plugin: `pipe:NAME` routes, delivered by running the `[pipe.NAME]` program.

One run per message and route, with every recipient of that route: the
message (CRLF line ends) on stdin, SENDER, RECIPIENT (several joined by
commas), RECIPIENTS (joined by spaces) and a fixed PATH as the whole
environment. Exit 0 is delivered; 75 (EX_TEMPFAIL, sysexits.h) is retried on
the queue's schedule; any other status, a signal or the timeout bounces, with
the program's stderr as the bounce's Diagnostic-Code.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgate import hookimpl
from mailgate.config import GatewayConfig, PipeConfig
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.core.errors import PermanentFailure, TemporaryFailure

log = Logger()

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
EX_TEMPFAIL = 75
STDERR_CAP_BYTES = 4096
DIAGNOSTIC_MAX_CHARS = 300
# spawnProcess cannot start a child in a session of its own, yet a timeout must
# kill everything the program started: a script's `sleep` would otherwise live
# on and hold the pipes open. So a tiny exec stub calls setsid() and then execs
# the program itself (no shell). Python's locale coercion (PEP 538) puts
# LC_CTYPE into the stub's environment; it is never one of ours, so it goes.
_NEW_SESSION = (
    "import os, sys\n"
    "os.setsid()\n"
    "os.environ.pop('LC_CTYPE', None)\n"
    "try:\n"
    "    os.execv(sys.argv[1], sys.argv[2:])\n"
    "except OSError as error:\n"
    "    sys.stderr.write(f'cannot run {sys.argv[1]}: {error.strerror}\\n')\n"
    f"    sys.exit({EX_TEMPFAIL})\n"
)


class PipeGateway:
    """Owns the `pipe` scheme of `mailgate_deliver`; `reactor` is injectable for tests."""

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._pipes: Mapping[str, PipeConfig] = {}

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._pipes = config.pipe

    @hookimpl
    def mailgate_deliver(self, route: str, envelope: Envelope, message: bytes) -> Deferred | None:
        parsed = Route(route)
        if parsed.scheme != "pipe":
            return None
        return Deferred.fromCoroutine(self.run(parsed.argument, envelope, message))

    async def run(self, name: str, envelope: Envelope, message: bytes) -> bool:
        """Run `[pipe.NAME]` once for this message; True, or raise a DeliveryError."""
        pipe = self._pipes.get(name)
        program = find_program(pipe.command[0]) if pipe is not None else None
        if pipe is None or program is None:  # a config mistake: retried, so the operator can fix it in time
            reason = (f"no [pipe.{name}] table" if pipe is None
                      else f"{pipe.command[0]!r} not found (PATH={SAFE_PATH})")
            log.warn("pipe:{name}: {reason}; will retry", name=name, reason=reason)  # the queue logs no reason
            raise TemporaryFailure("Delivery program not available", reason=f"pipe:{name}: {reason}")
        run = ProgramRun(message, pipe.timeout_seconds, self._reactor or _global_reactor())
        argv = [sys.executable, "-I", "-S", "-c", _NEW_SESSION, program, *pipe.command]
        run.reactor.spawnProcess(run, sys.executable, argv, env=program_environment(envelope))
        outcome = await run.done
        log.info("pipe:{name}: {argv} for {rcpt}: {outcome}", name=name, argv=list(pipe.command),
                 rcpt=",".join(envelope.rcpt_to), outcome=outcome.describe())
        return verdict(outcome)


def _global_reactor() -> Any:
    from twisted.internet import reactor  # builtin_plugins() has no reactor to hand

    return reactor


def find_program(program: str) -> str | None:
    """An absolute path for argv[0]: a bare name is looked up in SAFE_PATH only."""
    if os.sep in program:
        return os.path.abspath(program)
    return shutil.which(program, path=SAFE_PATH)


def program_environment(envelope: Envelope) -> dict[str, str]:
    """The whole environment: nothing of mailgate's own leaks to the program."""
    return {
        "PATH": SAFE_PATH,
        "SENDER": envelope.mail_from,
        "RECIPIENT": ",".join(envelope.rcpt_to),
        "RECIPIENTS": " ".join(envelope.rcpt_to),
    }


@dataclass
class Outcome:
    """How a run ended: exit status or signal, whether it timed out, its stderr."""

    exit_code: int | None
    signal: int | None
    stderr: bytes
    timed_out_after: float | None = None  # seconds, when the timeout ended it

    @property
    def timed_out(self) -> bool:
        return self.timed_out_after is not None

    def describe(self) -> str:
        if self.timed_out_after is not None:
            return f"timed out after {self.timed_out_after:g}s"
        return f"killed by signal {self.signal}" if self.signal else f"exit status {self.exit_code}"


def verdict(outcome: Outcome) -> bool:
    """Exit 0: True; 75: TemporaryFailure; anything else: PermanentFailure."""
    if outcome.exit_code == 0 and not outcome.timed_out:
        return True
    said = one_line(outcome.stderr)
    text = f"delivery program {outcome.describe()}" + (f": {said}" if said else "")
    if outcome.exit_code == EX_TEMPFAIL and not outcome.timed_out:
        raise TemporaryFailure(text)
    raise PermanentFailure(text)


def one_line(stderr: bytes) -> str:
    """Printable, single-line, capped: it ends up in a DSN header field."""
    text = " ".join(stderr.decode("utf-8", "replace").split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= DIAGNOSTIC_MAX_CHARS else text[: DIAGNOSTIC_MAX_CHARS - 3] + "..."


class ProgramRun(ProcessProtocol):
    """Feeds stdin, keeps the first STDERR_CAP_BYTES of stderr, kills at the timeout."""

    def __init__(self, message: bytes, timeout_seconds: float, reactor: Any) -> None:
        self.reactor = reactor
        self.done: Deferred[Outcome] = Deferred()
        self._message, self._timeout_seconds = message, timeout_seconds
        self._stderr = bytearray()
        self._pid: int | None = None
        self._timer: Any = None
        self._exited = self._timed_out = False

    @property
    def process(self) -> IProcessTransport:
        assert self.transport is not None, "the process has not started"
        return self.transport

    def connectionMade(self) -> None:
        self._pid = self.process.pid
        self._timer = self.reactor.callLater(self._timeout_seconds, self._kill)
        self.process.write(self._message)  # a program that never reads gets EPIPE'd quietly
        self.process.closeStdin()

    def errReceived(self, data: bytes) -> None:
        room = STDERR_CAP_BYTES - len(self._stderr)
        if room > 0:
            self._stderr += data[:room]

    def processExited(self, reason: Failure) -> None:
        self._exited = True  # its status stands, even if a child it left holds the pipes

    def _kill(self) -> None:
        """SIGKILL the session's process group: the program and all it started."""
        self._timed_out = not self._exited
        try:
            if self._pid is None:  # never started: there is no group to kill (killpg(0) would be ours)
                raise ProcessLookupError()
            os.killpg(self._pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # setsid() not reached yet, or all gone
            try:
                self.process.signalProcess("KILL")
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.process.loseConnection()  # stop waiting on pipes a fugitive may hold

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.done.callback(Outcome(
            exit_code=getattr(reason.value, "exitCode", None),
            signal=getattr(reason.value, "signal", None),
            stderr=bytes(self._stderr),
            timed_out_after=self._timeout_seconds if self._timed_out else None,
        ))
