"""The master of server.workers > 1: binds the listeners, starts and restarts the workers, keeps their counters.

The master binds every [[listen]] endpoint in privilegedStartService, as
root if twistd was started so (ports below 1024), and never accepts on
them: each worker inherits the listening sockets and accepts itself, the
kernel handing each connection to one of them. The master also prepares
the files (directories, a self-signed TLS pair) once, so that workers
starting together never race to create them; it holds the spool's lock
for the server's life, and clears the spool of what a crash left before
any worker writes to it. It routes what one worker hands to another's
part of the spool (mailgate.app.worker) and the CLI's requests worker 0
passes on (mailgate.app.shared_queue), kept for a worker down until it is back.

A worker that dies is started again with the same index (and so the same
part of the spool), after a delay doubling from half a second to 30 s while it
keeps dying young, with one log line each time, counted in
`mailgate_worker_restarts_total`. The `metrics.endpoint` is bound here too
and served by worker 0 alone (it has the status page), from
every process's counters (see mailgate.ops.metrics). SIGTERM stops the workers
(each finishes its sessions, as a single process does) and then the
master; SIGHUP is passed on to every worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.logger import FileLogObserver, ILogObserver, Logger

from mailgate.app import preflight
from mailgate.app.service import fail_startup, lock_spool
from mailgate.app.shared_queue import CONTROL, DONE, FLUSH
from mailgate.app.stopping import stop_once_on_signals
from mailgate.app.worker import HELLO, QUEUED, RESTARTS, WorkerSetup, ENVIRONMENT
from mailgate.app.worker_output import WorkerProcess
from mailgate.config import ConfigError, GatewayConfig
from mailgate.core.queue_ids import part_of
from mailgate.limits.anvil import FAILED, SUCCEEDED, AnvilResponder, Counters
from mailgate.ops.log_observer import twistd_destination
from mailgate.ops.log_text import classic_line
from mailgate.ops.metrics import SHARED_DIRECTORY
from mailgate.outbound.spool import QueueStore

log = Logger()

FIRST_RESTART_SECONDS = 0.5
LONGEST_RESTART_SECONDS = 30.0
YOUNG_SECONDS = 30.0  # a worker that ran longer than this died of something new: restart at once
STOP_GRACE_SECONDS = 20.0  # the workers' own shutdown grace (10 s) and then some; then SIGKILL
TWISTD = "from twisted.scripts.twistd import run; run()"  # `twistd` itself, with this interpreter


class Silent(Factory):
    """The master's factory on a listener it never accepts on, and never logs about."""

    noisy = False


class MasterLink(AnvilResponder):
    """The master's end of one worker's socketpair: the counters, plus the queue's hand-overs and requests."""

    def __init__(self, master: Master, index: int) -> None:
        super().__init__(master.counters)
        self._master, self._index = master, index

    def heard(self, verb: bytes, fields: list[str]) -> None:
        if verb == HELLO:
            self._master.worker_ready(self._index, self)
        elif verb == QUEUED:
            self._master.to_part(fields[0], QUEUED, fields[0])
        elif verb == CONTROL:
            self._master.pass_request(fields)
        elif verb == DONE:
            self._master.to_worker(0, DONE, *fields)
        elif verb == FAILED or verb == SUCCEEDED:
            self._master.tell_others(self, verb, *fields)


class Master(Service):
    """Everything the master does; see the module docstring."""

    def __init__(self, config: GatewayConfig, config_path: str, reactor: Any,
                 owner: Any = None, twistd: Any = None) -> None:
        self.config, self._config_path, self._reactor = config, config_path, reactor
        self._owner, self._twistd = owner, twistd
        self.counters = Counters(config.limits, reactor)
        self._ports: list[Any] = []
        self._metrics_port: Any = None  # metrics.endpoint's, handed to worker 0
        self._metrics_directory = os.path.join(config.server.state_dir, "metrics")  # every worker's counters
        self._processes: dict[int, WorkerProcess] = {}
        self._links: dict[int, MasterLink] = {}
        self._started_at: dict[int, float] = {}
        self._delays: dict[int, float] = {}
        self._ready: set[int] = set()  # said Hello once
        self._live: set[int] = set()  # said Hello, and running since
        self._waiting: dict[int, list[tuple[bytes, tuple[str, ...]]]] = {}  # lines for a worker that is down
        self._queue = QueueStore(os.path.join(config.server.state_dir, "queue"))
        self._stopping = False
        self.restarts = 0
        self.log_out: IO[str] | None = None  # where the master's log observer writes, when it is ours

    def setServiceParent(self, parent: Any) -> None:
        """Under twistd, offer the application the text log observer twistd would make (its lines
        byte for byte, mailgate.ops.log_text), made here so that the workers' lines can be written
        to its file directly (WorkerProcess)."""
        options = self._twistd
        if (options is not None and hasattr(parent, "setComponent") and parent.getComponent(ILogObserver) is None
                and not options.get("logger") and not options.get("syslog")):
            self.log_out = twistd_destination(options)
            parent.setComponent(ILogObserver, FileLogObserver(self.log_out, classic_line))
        super().setServiceParent(parent)

    # --- start ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        problems = preflight.file_problems(self.config)
        if problems:
            fail_startup(tuple(problems), self._twistd)
        try:
            if preflight.prepare_files(self.config, self._owner):
                log.warn("tls.certificate: {cert} and tls.key: {key} were missing: generated a self-signed pair",
                         cert=self.config.tls.certificate, key=self.config.tls.key)
            if preflight.uses_tls(self.config):
                preflight.load_tls(self.config)
        except OSError as error:
            fail_startup((f"{error.filename}: cannot create: {error.strerror}",), self._twistd)
        except ConfigError as error:
            fail_startup(tuple(error.problems), self._twistd)
        for index, listener in enumerate(self.config.listen):
            port = self._bind(f"listen[{index}].endpoint", listener.endpoint)
            log.info("listening: {name} on {address}, for {count} workers",
                     name=listener.name, address=port.getHost(), count=self.config.server.workers)
            self._ports.append(port)
        if self.config.metrics.endpoint:
            self._metrics_port = self._bind("metrics.endpoint", self.config.metrics.endpoint)
            log.info("listening: metrics and status page (http) on {address}, for worker 0",
                     address=self._metrics_port.getHost())
        super().privilegedStartService()

    def _bind(self, key: str, description: str) -> Any:
        """Listen on the endpoint without ever accepting: the workers accept."""
        bound: list[Any] = []
        try:
            d = serverFromString(self._reactor, description).listen(Silent())
        except (IndexError, KeyError):
            fail_startup((f"{key}: {description}: no such socket was passed by systemd",), self._twistd)
        d.addCallbacks(bound.append, bound.append)  # a listening endpoint answers at once: a port or a Failure
        result = bound[0] if bound else None
        if result is None or not hasattr(result, "fileno"):
            error = getattr(getattr(result, "value", None), "socketError", result)
            fail_startup((f"{key}: cannot listen on {description}: {error}",), self._twistd)
        result.stopReading()
        return result

    def startService(self) -> None:
        super().startService()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        stop_once_on_signals(self._reactor)
        if not lock_spool(self._queue, self._reactor, self._twistd):  # for the server's life: the CLI asks it
            return
        d = deferToThread(self._queue.prepare)  # before any worker writes: see mailgate.app.worker
        d.addCallbacks(self._spool_prepared, self._spool_failed)
        d.addErrback(self._spawn_failed)

    def _spool_prepared(self, set_aside: list[tuple[str, str]]) -> None:
        for queue_id, reason in set_aside:
            log.warn("queue: {id} set aside in corrupt/: {reason}", id=queue_id, reason=reason)
        if self._metrics_port is not None:  # counters start at zero with the server
            shutil.rmtree(self._metrics_directory, ignore_errors=True)
            try:
                os.makedirs(self._metrics_directory)
            except OSError as error:
                log.critical("server.state_dir: cannot make {path}: {error}", path=self._metrics_directory,
                             error=error.strerror)
                self._reactor.stop()
                return
        for index in range(self.config.server.workers):
            self._spawn(index)

    def _spool_failed(self, failure: Any) -> None:
        log.critical("server.state_dir: cannot prepare the queue: {error}", error=failure.getErrorMessage())
        self._reactor.stop()

    def _spawn_failed(self, failure: Any) -> None:
        """A worker that cannot even be started (say, --uid's user may not run the interpreter):
        one line saying so, then stop."""
        log.critical("workers: cannot start {executable}: {error} (after --uid/--gid, that user must be able "
                     "to run it and read mailgate)", executable=sys.executable, error=failure.getErrorMessage())
        self._reactor.stop()

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        link = MasterLink(self, index)
        self._links[index] = link
        self._reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: link))
        ours.close()
        listeners = tuple((port.fileno(), port.addressFamily) for port in self._ports)
        metrics = self._metrics_port
        served = (metrics.fileno(), metrics.addressFamily) if metrics is not None and index == 0 else None
        setup = WorkerSetup(index, self.config.server.workers, theirs.fileno(), listeners, served)
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", setup.control: setup.control}
        child_fds.update({fd: fd for fd, _ in (*listeners, *([served] if served else []))})
        env = {**os.environ, ENVIRONMENT: setup.encode()}
        if metrics is not None:
            env[SHARED_DIRECTORY] = os.path.abspath(self._metrics_directory)
        process = WorkerProcess(self, index)
        args = [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=",
                "--logger=mailgate.app.worker.log_observer", "mailgate", "--config", self._config_path]
        self._reactor.spawnProcess(process, sys.executable, args, env=env, childFDs=child_fds)
        theirs.close()
        log.info("workers: worker {index} started (pid {pid})", index=index, pid=getattr(process.transport, "pid", None))
        self._processes[index] = process
        self._started_at[index] = self._reactor.seconds()

    # --- running -------------------------------------------------------------

    def worker_ready(self, index: int, link: MasterLink) -> None:
        first = index not in self._ready
        self._ready.add(index)
        self._live.add(index)
        self._links[index] = link
        if index == 0:
            link.send(RESTARTS, str(self.restarts))
        for verb, fields in self._waiting.pop(index, []):
            self.to_worker(index, verb, *fields)
        if first and len(self._ready) == self.config.server.workers:
            log.info("workers: all {count} ready", count=len(self._ready))

    def tell_others(self, source: MasterLink, verb: bytes, *fields: str) -> None:
        """Pass a worker's news (an AUTH failure) on to every other worker (one that has just gone: not)."""
        for link in list(self._links.values()):
            if link is not source:
                link.send(verb, *fields)

    def to_part(self, queue_id: str, verb: bytes, *fields: str) -> None:
        """A line for the worker whose part of the spool `queue_id` is in."""
        self.to_worker(part_of(queue_id, self.config.server.workers), verb, *fields)

    def to_worker(self, index: int, verb: bytes, *fields: str) -> None:
        """A line for one worker; kept until it is back if it is down (or starting: it says Hello)."""
        link = self._links.get(index)
        if index not in self._live or link is None or not link.send(verb, *fields):
            self._waiting.setdefault(index, []).append((verb, fields))

    def pass_request(self, fields: list[str]) -> None:
        """A CLI request worker 0 passes on: a flush to every other worker, the rest to the entry's."""
        if fields[0] == FLUSH:
            for index in range(1, self.config.server.workers):
                self.to_worker(index, CONTROL, *fields)
        else:
            self.to_part(fields[1], CONTROL, *fields)

    def worker_ended(self, process: WorkerProcess, reason: Any) -> None:
        index = process.index
        if self._processes.get(index) is process:
            del self._processes[index]
        self._live.discard(index)
        if self._stopping:
            return
        if index not in self._ready:
            log.critical("workers: worker {index} exited during start-up ({why}): stopping", index=index,
                         why=reason)
            self._reactor.stop()
            return
        self._restart_later(index, reason)

    def _restart_later(self, index: int, reason: Any) -> None:
        lived = self._reactor.seconds() - self._started_at.get(index, 0.0)
        delay = (0.0 if lived > YOUNG_SECONDS
                 else min(max(self._delays.get(index, 0.0) * 2, FIRST_RESTART_SECONDS), LONGEST_RESTART_SECONDS))
        self._delays[index] = delay
        self.restarts += 1
        if 0 in self._live:  # worker 0 serves the metrics; if it is the one gone, it hears at Hello
            self._links[0].send(RESTARTS, str(self.restarts))
        log.warn("workers: worker {index} ended ({why}) after {lived:.1f} s: starting it again in {delay:.1f} s",
                 index=index, why=reason, lived=lived, delay=delay)
        self._reactor.callLater(delay, self._spawn, index)

    def _on_sighup(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self._signal_all, signal.SIGHUP)

    def _signal_all(self, signum: int) -> None:
        log.info("workers: passing signal {signum} on to {count} worker(s)", signum=signum, count=len(self._processes))
        for process in list(self._processes.values()):
            if process.transport is not None:
                try:
                    process.transport.signalProcess(signum)
                except Exception:  # it ended meanwhile
                    pass

    # --- stop ----------------------------------------------------------------

    def stopService(self) -> Deferred[Any]:
        """SIGTERM to every worker; wait for them all (SIGKILL after the grace); then close the ports."""
        self._stopping = True
        signal.signal(signal.SIGHUP, self._previous_sighup)
        running = list(self._processes.values())
        log.info("mailgate stopping: {count} worker(s)", count=len(running))
        self._signal_all(signal.SIGTERM)
        timer = self._reactor.callLater(STOP_GRACE_SECONDS, self._signal_all, signal.SIGKILL)
        done = DeferredList([process.ended for process in running], consumeErrors=True)
        done.addBoth(lambda _: timer.cancel() if timer.active() else None)
        done.addBoth(lambda _: self._close())
        return done

    def _close(self) -> None:
        for port in [*self._ports, *([self._metrics_port] if self._metrics_port is not None else [])]:
            port.stopListening()
        self._queue.unlock()
        super().stopService()
        log.info("mailgate stopped cleanly")


def master_service(config: GatewayConfig, config_path: str, reactor: Any, owner: Any = None,
                   twistd: Any = None) -> Master | None:
    """The master, when server.workers > 1 and this process is not itself a worker."""
    if config.server.workers <= 1 or os.environ.get(ENVIRONMENT):
        return None
    return Master(config, config_path, reactor, owner, twistd)

