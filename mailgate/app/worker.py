"""One worker process of several (server.workers > 1): its listeners, its link to the master, its queue role.

The master (mailgate.app.workers) binds every listener and starts each
worker as `twistd mailgate` with the sockets and one end of a socketpair
inherited, described in the MAILGATE_WORKER environment variable. The
worker adopts the sockets (`reactor.adoptStreamPort`) instead of binding,
asks the master for the shared limits over the socketpair (short lines,
see mailgate.limits.anvil), and stops when the master has gone.

The queue: a message must be attempted by exactly one process, without
locks between them: the spool is cut into one part per worker by a pure
function of each entry's id (mailgate.core.queue_ids), and each worker
attempts its own part only. A worker makes the ids of the mail it accepts
in its own part, so it delivers what it accepted; an entry it spools in
another's part (a bounce, a list's copy) it hands over (`Queued`, through
the master, to that worker). A worker started again, after a crash or a
SIGKILL, resumes its part from env/, its predecessor's mail with it.
Nothing is lost: an entry is on disk before the client hears 250. The
master holds the spool's lock (so `mailgate queue ...` finds "the running
server") and clears what a crash left before any worker starts; a worker
must not (the others are writing meanwhile), so it never does. Worker 0
serves the CLI's requests for every part (mailgate.app.shared_queue).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, eventAsText
from zope.interface import implementer

from mailgate.app.shared_queue import CONTROL, DONE, AllParts, carry_out
from mailgate.config import GatewayConfig
from mailgate.core.queue_ids import claim_part
from mailgate.limits import state
from mailgate.limits.anvil import AnvilClient, AnvilLink
from mailgate.ops.log_text import event_text
from mailgate.ops.turn_writer import TurnWriter
from mailgate.outbound.scheduler import Scheduler

log = Logger()

ENVIRONMENT = "MAILGATE_WORKER"


HELLO = b"H"  # worker -> master: started (its queue is running), with this index and pid
QUEUED = b"Q"  # a worker -> the master -> a worker: an entry spooled in that worker's part, to be attempted there
RESTARTS = b"R"  # the master -> worker 0, which serves the metrics: how many workers it has started again


@dataclass(frozen=True)
class WorkerSetup:
    index: int
    workers: int  # how many: the parts of the spool
    control: int  # this worker's end of the socketpair to the master
    listeners: tuple[tuple[int, int], ...]  # (descriptor, address family), in [[listen]] order
    metrics: tuple[int, int] | None = None  # metrics.endpoint's, for worker 0 only

    def encode(self) -> str:
        return json.dumps({"index": self.index, "workers": self.workers, "control": self.control,
                           "listeners": self.listeners, "metrics": self.metrics})

    @classmethod
    def from_environment(cls) -> WorkerSetup | None:
        raw = os.environ.get(ENVIRONMENT)
        if not raw:
            return None
        data = json.loads(raw)
        metrics = data.get("metrics")
        return cls(data["index"], data["workers"], data["control"],
                   tuple((fd, family) for fd, family in data["listeners"]),
                   (metrics[0], metrics[1]) if metrics else None)


class WorkerLink(AnvilLink):
    """The worker's end of the socketpair: hears the master, and ends the worker when it goes."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self.scheduler: Scheduler | None = None  # this worker's part of the queue, once it runs
        self.all_parts: AllParts | None = None  # worker 0's, serving the CLI's requests
        self.restarts: Any = None  # worker 0's metrics' WorkerRestarts, when they are served

    def heard(self, verb: bytes, fields: list[str]) -> None:
        if verb == QUEUED and self.scheduler is not None:
            self.scheduler.schedule(fields[0], self._reactor.seconds())
        elif verb == CONTROL and self.scheduler is not None:
            carry_out(self.scheduler, self, fields)
        elif verb == DONE and self.all_parts is not None:
            self.all_parts.done(fields[0])
        elif verb == RESTARTS and self.restarts is not None:
            self.restarts.count = int(fields[0])

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)  # `lost`: the master has gone (perhaps before this reactor ran)
        if self._reactor.running:
            log.warn("workers: the master has gone: stopping")
            self._reactor.stop()


class AdoptedEndpoint:
    """A server endpoint for a socket the master bound and listens on: adopt it, bind nothing."""

    def __init__(self, reactor: Any, descriptor: int, family: int) -> None:
        self._reactor, self._descriptor, self._family = reactor, descriptor, family

    def listen(self, factory: Factory[Any]) -> Deferred[Any]:
        port = self._reactor.adoptStreamPort(self._descriptor, self._family, factory)
        os.close(self._descriptor)  # the port holds a duplicate; the master keeps its own
        return succeed(port)


class WorkerRole:
    """What a worker process changes in the GatewayService: where listeners come from, who runs the queue."""

    def __init__(self, setup: WorkerSetup, reactor: Any) -> None:
        self.setup = setup
        self._reactor = reactor
        self.link = WorkerLink(reactor)
        reactor.adoptStreamConnection(setup.control, socket.AF_UNIX, Factory.forProtocol(lambda: self.link))
        os.close(setup.control)

    def endpoint(self, index: int) -> AdoptedEndpoint:
        descriptor, family = self.setup.listeners[index]
        return AdoptedEndpoint(self._reactor, descriptor, family)

    def metrics_endpoint(self) -> AdoptedEndpoint | None:
        """metrics.endpoint, bound by the master: worker 0 serves it, the others do not."""
        if self.setup.metrics is None:
            return None
        return AdoptedEndpoint(self._reactor, *self.setup.metrics)

    def share_queue(self, scheduler: Scheduler) -> AllParts | None:
        """Attempt this worker's part of the spool (never clearing it: others write to it); in
        worker 0, what serves the CLI's requests for every part."""
        index, parts = self.setup.index, self.setup.workers
        scheduler.prepare_spool = False
        scheduler.share(index, parts, self._forward)
        self.link.scheduler = scheduler
        if index != 0:
            return None
        self.link.all_parts = AllParts(scheduler, self.link, index, parts)
        return self.link.all_parts

    def _forward(self, queue_id: str) -> None:
        if not self.link.send(QUEUED, queue_id):  # the master has gone: its worker resumes it from env/ at its start
            log.warn("workers: could not hand {id} to the queue: the master has gone", id=queue_id)

    def started(self) -> None:
        """Tell the master; or, if it died while this worker was starting, stop: no orphans."""
        if self.link.lost:
            log.warn("workers: the master went away during start-up: stopping")
            self._reactor.stop()
            return
        self.link.send(HELLO, str(self.setup.index), str(os.getpid()))


def process_role(config: GatewayConfig, reactor: Any) -> WorkerRole | None:
    """This process's role (a worker, or None) and its SharedState, before the plugins are configured."""
    from mailgate.limits.redis_state import RedisState

    setup = WorkerSetup.from_environment()
    role = WorkerRole(setup, reactor) if setup is not None else None
    if setup is not None:
        claim_part(setup.index, setup.workers)
    if config.state.backend != "memory":
        state.use(RedisState.from_config(config.state, config.limits, reactor))
    elif role is not None:
        state.use(AnvilClient(role.link))
    return role


def attach(service: Any, role: WorkerRole | None, reactor: Any) -> Any:
    """Give the GatewayService its worker role; tell the master once it has started."""
    if role is not None:
        service.role = role
        metrics = service.ops.metrics
        role.link.restarts = metrics.worker_restarts if metrics is not None else None
        reactor.callWhenRunning(role.started)
    return service


@implementer(ILogObserver)
class LineObserver:
    """A worker's log: one `LEVEL text` line per event on stdout, which the master relays into its log.

    The lines of one reactor turn are written together at the end of it (TurnWriter): a
    write, and a wake-up of the master, per turn rather than per event.
    Lines logged while the reactor is not running (start-up, shutdown) or
    from another thread are written at once, with any still waiting, and
    the rest at exit; a crash's traceback goes to stderr, unbuffered.
    """

    def __init__(self, out: IO[str], reactor: Any) -> None:
        self._out = TurnWriter(out, reactor)

    def __call__(self, event: dict[str, Any]) -> None:
        level = getattr(event.get("log_level"), "name", "info")
        text = (event_text(event) if "log_failure" not in event  # a failure's text ends with its traceback
                else eventAsText(event, includeTimestamp=False, includeSystem=False))
        self._out.write("".join(f"{level} {line}\n" for line in text.splitlines()))


def log_observer() -> LineObserver:
    """twistd --logger for a worker."""
    from twisted.internet import reactor  # twistd has installed it before it asks for the logger

    return LineObserver(sys.stdout, reactor)
