"""The running gateway: listeners and shared resources, started, reloaded and stopped in order."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, NoReturn

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailgate.app import operations, preflight
from mailgate.app.certificates import CHECK_SECONDS, CertificateWatch
from mailgate.app.generation import Generation, Shared, hand_over, listener_factory, new_generation
from mailgate.app.listening import StartupListener
from mailgate.app.periodic import Periodic
from mailgate.app.pipeline import Pipeline, build_pipeline, deliverer_for, queue_parts
from mailgate.app.reload import Reloader
from mailgate.app.stopping import stop_once_on_signals
from mailgate.config import ConfigError, GatewayConfig, ListenConfig
from mailgate.hooks.calling import Hooks
from mailgate.limits.admission import Admission, AdmissionGate
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.limits.state import shared_admission, shared_throttle
from mailgate.net.accept_backoff import AcceptBackoff, pause_on_exhaustion
from mailgate.net.proxy_protocol import ProxyHeaderFactory
from mailgate.net.tls_reload import ReloadableTLS
from mailgate.ops import Operations
from mailgate.outbound import control
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.spool import QueueStore
from mailgate.store.durable import Owner

log = Logger()

DISK_THREADS = 32  # fsync waits on the disk, not the CPU: many may overlap
SHUTDOWN_GRACE_SECONDS = 10.0
REQUEST_POLL_SECONDS = 1.0  # how soon `mailgate queue flush|delete` is noticed


def _admission(config: GatewayConfig, reactor: Any) -> Admission:
    """The server's one Admission of new connections, every listener's (limits.max_connections...)."""
    admission = Admission(config.limits, reactor)
    log.info("connections: at most {count} at once ({per_ip} per address), RLIMIT_NOFILE {descriptors}",
             count=admission.max_connections, per_ip=config.limits.max_connections_per_ip,
             descriptors=admission.descriptors)
    if admission.max_connections >= admission.descriptors:
        log.warn("limits.max_connections: {count} is not below RLIMIT_NOFILE ({descriptors}): descriptors "
                 "may run out first", count=admission.max_connections, descriptors=admission.descriptors)
    return admission


class GatewayService(MultiService):
    """Owns the listeners, the disk thread pool and the sessions' orderly end.

    Everything touching the file system or a port is built in
    privilegedStartService, after twistd has applied --rundir (relative
    paths are relative to it) and before it drops --uid/--gid (so ports
    below 1024 can be bound).

    The configuration in force is `generation` (mailgate.app.generation):
    a reload (SIGHUP) builds the next one and `adopt`s it.
    """

    def __init__(
        self, config: GatewayConfig, hooks: Hooks, reactor: Any, configured: Deferred,
        owner: Owner | None = None, twistd: Mapping[str, Any] | None = None, ops: Operations | None = None,
        extra_plugins: tuple = (), config_path: str | None = None, launched_in: str | None = None,
    ) -> None:
        super().__init__()
        self.owner = owner  # twistd's --uid/--gid: who gets the directories and files made as root
        self.twistd = twistd  # twistd's own options, when it runs us: its status pipe, for start-up errors
        self._configured = configured
        self.config = config  # the one in force: generation.config, once there is a generation
        self.hooks = hooks  # the first generation's
        self.reactor = reactor
        self.ops = ops if ops is not None else Operations(config, reactor.seconds)
        self.extra_plugins = extra_plugins  # registered again at each reload
        self.config_path = config_path or config.source  # what a reload reads
        self.reloader = Reloader(self, launched_in or os.getcwd())
        self.threadpool = ThreadPool(minthreads=0, maxthreads=DISK_THREADS, name="mailgate-disk")
        self.factories: list[Any] = []
        self._listeners: list[tuple[ListenConfig, Factory]] = []
        self.pipeline: Pipeline | None = None
        self.generation: Generation | None = None  # set when the listeners are built
        # AUTH/POP3 failures and connection counts outlive configurations; with workers, the master's
        # (mailgate.limits.state: the role is set before the service is built).
        self.shared = Shared(reactor, shared_throttle(AuthThrottle.from_limits(config.limits, reactor)),
                             None, self.ops.meters, shared_admission(_admission(config, reactor)))
        self.queue_hooks = Hooks(hooks.manager, reactor, config.plugins.timeout_seconds)  # follows reloads
        self._certificates: CertificateWatch | None = None
        self._periodic: list[Periodic] = []
        self.ports: dict[str, Any] = {}  # listener name -> IListeningPort, once bound
        self._backoffs: list[AcceptBackoff] = []
        self._previous_sighup: Any = None  # the handler before ours, put back at stop
        self.role: Any = None  # a worker's WorkerRole (server.workers > 1, mailgate.app.worker)
        self.started = reactor.seconds()

    @property
    def outbound(self) -> Scheduler | None:
        return self.pipeline.scheduler if self.pipeline is not None else None

    def setServiceParent(self, parent: Any) -> None:
        """Under twistd `parent` is the application: mailgate's log observer is offered to it
        (twistd asks the application before making its own, after its --logger)."""
        if self.twistd is not None and hasattr(parent, "setComponent") and parent.getComponent(ILogObserver) is None:
            observer = self.ops.observer_for_twistd(self.twistd)
            if observer is not None:
                parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)

    def run_blocking(self, function: Any, *args: Any) -> Deferred:
        """Run a call that blocks on the disk in the disk thread pool."""
        return deferToThreadPool(self.reactor, self.threadpool, function, *args)

    def privilegedStartService(self) -> None:
        tls = self._prepare_files()
        if tls is not None:
            self.shared = replace(self.shared, tls=ReloadableTLS(tls))
            self._certificates = CertificateWatch(self.shared.tls, lambda: self.config,  # type: ignore[arg-type]
                                                 self.run_blocking)
        metrics = operations.metrics_listener(self)
        if metrics is not None:
            metrics.setServiceParent(self)
        if self._configured.called:
            self._build_listeners()  # children bound by super(), before privileges drop
        else:
            self._configured.addCallbacks(lambda _: self._build_listeners(), self._configure_failed)
        super().privilegedStartService()

    def _configure_failed(self, failure: Any) -> None:
        log.critical("plugins: mailgate_configure failed: {error}", error=failure.getErrorMessage())
        self.reactor.stop()

    def _prepare_files(self) -> CertificateOptions | None:
        """Check and make directories and the TLS pair, in --rundir; the listeners' TLS options."""
        problems = preflight.file_problems(self.config)
        if problems:
            self._fail_startup(*problems)
        try:
            if preflight.prepare_files(self.config, self.owner):
                log.warn("tls.certificate: {cert} and tls.key: {key} were missing: generated a self-signed pair",
                         cert=self.config.tls.certificate, key=self.config.tls.key)
        except OSError as error:
            self._fail_startup(f"{error.filename}: cannot create: {error.strerror}")
        if not preflight.uses_tls(self.config):
            return None
        try:
            return preflight.load_tls(self.config)
        except ConfigError as error:
            self._fail_startup(*error.problems)

    def _build_listeners(self) -> None:
        self.pipeline = pipeline = build_pipeline(self.config, self.queue_hooks, self.reactor, self.run_blocking)
        deliverer = deliverer_for(pipeline, self.hooks, self.config)
        self.generation = new_generation(1, self.config, self.hooks, deliverer, self.shared, self.reactor.seconds())
        for index, listener in enumerate(self.config.listen):
            factory = listener_factory(listener, self.generation, self.shared)
            self.factories.append(factory)
            self._listeners.append((listener, factory))
            served: Any = factory
            if listener.tls == "implicit":
                assert self.shared.tls is not None  # made in _prepare_files for any TLS listener
                served = TLSMemoryBIOFactory(self.shared.tls, False, factory)
            if listener.proxy:  # the header comes first, before any TLS handshake
                served = ProxyHeaderFactory(served, listener.proxy, self.reactor, listener.name)
            self._listen(index, listener, AdmissionGate(served, self.shared.admission))
        if self.running:  # configured late: startService has already run
            self._start_queue(pipeline.scheduler)

    def adopt(self, config: GatewayConfig, hooks: Hooks, tls: CertificateOptions | None) -> None:
        """A reload's new configuration takes over new sessions and queue attempts (mailgate.app.reload)."""
        pipeline, previous = self.pipeline, self.generation
        assert pipeline is not None and previous is not None  # reloads begin once the listeners are built
        deliverer = deliverer_for(pipeline, hooks, config)
        self.generation = generation = new_generation(previous.number + 1, config, hooks, deliverer, self.shared,
                                                      self.reactor.seconds(), previous)
        for listener, factory in self._listeners:
            hand_over(factory, listener, generation, self.shared)
        self.queue_hooks.use(hooks.manager, config.plugins.timeout_seconds)
        pipeline.deliverer = deliverer_for(pipeline, self.queue_hooks, config)  # bounces: routed by the new plugins
        parts = queue_parts(config, self.queue_hooks, pipeline.deliverer, pipeline.spooler, self.reactor,
                            self.run_blocking)
        pipeline.scheduler.reconfigure(parts.transports, parts.bounces, parts.policy, parts.delay_warning_seconds)
        old_smtp, pipeline.smtp = pipeline.smtp, parts.smtp
        Deferred.fromCoroutine(old_smtp.close_idle()).addErrback(
            lambda failure: log.failure("reload: closing the old relay connections", failure))
        if tls is not None and self._certificates is not None:
            self._certificates.loaded(tls)
        pipeline.bounces = parts.bounces
        self.ops.reconfigure(config)
        self.config, self.hooks = config, hooks

    def _start_queue(self, scheduler: Scheduler) -> None:
        """Lock the spool, resume what is queued, and serve the CLI's requests. With workers
        the master holds the lock, each worker resumes its own part, and worker 0 serves the
        requests for every part (mailgate.app.shared_queue)."""
        requests: control.QueueActions | None = scheduler
        if self.role is not None:
            requests = self.role.share_queue(scheduler)
        elif not lock_spool(scheduler.store, self.reactor, self.twistd):
            return
        Deferred.fromCoroutine(scheduler.start()).addErrback(
            lambda f: log.failure("queue: could not resume the spool", f)
        )
        if requests is not None:
            served = requests  # the lambda's, narrowed
            self._every("queue requests (mailgate queue flush|delete)", lambda: control.serve_requests(served),
                        REQUEST_POLL_SECONDS)

    def _every(self, name: str, work: Any, seconds: float) -> None:
        periodic = Periodic(name, work, self.reactor, seconds)
        periodic.start(now=False)
        self._periodic.append(periodic)

    def _listen(self, index: int, listener: ListenConfig, factory: Factory) -> None:
        try:
            endpoint = (self.role.endpoint(index) if self.role is not None
                        else serverFromString(self.reactor, listener.endpoint))
        except (IndexError, KeyError):  # the config checked its form: only systemd's lookup is left
            self._fail_startup(f"listen[{index}].endpoint: {listener.endpoint}: no such socket was passed by "
                               "systemd (LISTEN_FDS)")
        service = ListenerService(endpoint, factory, index, listener, self)
        service.setName(f"listen.{listener.name}")
        service.setServiceParent(self)

    def _bound(self, port: Any, listener: ListenConfig) -> Any:
        self.ports[listener.name] = port
        backoff = pause_on_exhaustion(port, self.reactor, listener.name)  # EMFILE: pause, never spin
        if backoff is not None:
            self._backoffs.append(backoff)
        log.info("listening: {name} ({protocol}, tls={tls}) on {address}",
                 name=listener.name, protocol=listener.protocol, tls=listener.tls, address=port.getHost())
        return port

    def startService(self) -> None:
        problems = preflight.access_problems(self.config)  # privileges are dropped by now
        if problems:
            self._fail_startup(*problems)
        self._hold_sighup()
        stop_once_on_signals(self.reactor)
        self.threadpool.start()
        if self.outbound is not None:
            self._start_queue(self.outbound)
        if self._certificates is not None:
            self._every("tls: certificate check", self._certificates.check, CHECK_SECONDS)
        figures = operations.queue_figures(self)
        if figures is not None:
            figures.start(now=True)
            self._periodic.append(figures)
        self.started = self.reactor.seconds()
        super().startService()
        # What start-up made (modules, config, plugins: ~70,000 objects) lives as long as the
        # process: frozen, the cyclic collector stops walking it in each full collection (~45 ms
        # a walk here; GC time per relayed message 0.14 -> 0.09 ms, measured with gc.callbacks).
        # Still freed by reference counting; only a cycle among them would stay (gc.freeze docs).
        gc.collect()
        gc.freeze()
        log.info("mailgate started: {count} listener(s)", count=len(self.config.listen))

    def _hold_sighup(self) -> None:
        """SIGHUP reloads (mailgate.app.reload); its default action would end the process with no
        clean stop, so `kill -HUP` or `systemctl reload` never stops the server."""
        def on_sighup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self._sighup)

        try:
            self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        except ValueError:  # not the main thread (a test driving the service): no signals here
            self._previous_sighup = None

    def _sighup(self) -> None:
        log.info("SIGHUP: reloading the configuration")
        self.reloader.request()

    def stopService(self) -> Deferred:
        """Stop accepting, end sessions (deliveries in flight finish), then the disk pool."""
        log.info("mailgate stopping: closing listeners and {count} session(s)",
                 count=sum(len(getattr(f, "sessions", ())) for f in self.factories))
        d = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        for backoff in self._backoffs:
            backoff.stop()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
        await super().stopService()
        sessions_done = DeferredList(
            [factory.shut_down() for factory in self.factories if hasattr(factory, "shut_down")],
            consumeErrors=True,
        )
        timer = self.reactor.callLater(SHUTDOWN_GRACE_SECONDS, self._abort_sessions)
        await sessions_done
        if timer.active():
            timer.cancel()
        for periodic in self._periodic:
            periodic.stop()
        if self.pipeline is not None:
            await self.pipeline.scheduler.stop()
            await self.pipeline.smtp.close_idle()
            self.pipeline.scheduler.store.unlock()
        self.threadpool.stop()
        log.info("mailgate stopped cleanly")

    def _fail_startup(self, *problems: str) -> NoReturn:
        fail_startup(problems, self.twistd)

    def _abort_sessions(self) -> None:
        for factory in self.factories:
            for session in list(getattr(factory, "sessions", ())):
                session.transport.abortConnection()


class ListenerService(StartupListener):
    """One [[listen]] table's port: bound before privileges drop, a failure stopping start-up."""

    def __init__(self, endpoint: Any, factory: Factory[Any], index: int, listener: ListenConfig,
                 gateway: GatewayService) -> None:
        super().__init__(endpoint, factory, gateway, f"listen[{index}].endpoint", listener.endpoint)
        self._listener = listener

    def _bound(self, port: Any) -> Any:
        return self._gateway._bound(port, self._listener)


def lock_spool(store: QueueStore, reactor: Any, twistd: Mapping[str, Any] | None) -> bool:
    """Take the spool's lock for this server (the single process, or the master of workers); if
    another server has it, one line and stop; if it cannot be taken at all, fail start-up."""
    try:
        locked = store.lock()
    except OSError as error:
        fail_startup((f"server.state_dir: cannot lock the queue: {error.filename}: {error.strerror}",), twistd)
    if not locked:
        log.critical("server.state_dir: {dir} is in use by another running mailgate", dir=store.directory)
        reactor.stop()
    return locked


def fail_startup(problems: tuple[str, ...], twistd: Mapping[str, Any] | None = None) -> NoReturn:
    """One line per problem naming the key, on the real stderr and in the log, then exit 1.

    twistd has already pointed sys.stderr at its log by now, so the lines
    go to both: the operator at the terminal and the log reader see them.
    A daemonizing twistd's launcher waits on a status pipe for an Exception
    and would wait forever for a SystemExit, so the first line (twistd
    reads 100 bytes) is written there, for it to show at the terminal.
    """
    for problem in problems:
        log.critical("{problem}", problem=problem)
        print(problem, file=sys.__stderr__)
    status_pipe = twistd.get("statusPipe") if twistd is not None else None
    if status_pipe is not None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        os.write(status_pipe, b"1 " + (problems[0] + more).encode("utf-8", "replace")[:98])
        os.close(status_pipe)
        twistd["statusPipe"] = None  # type: ignore[index]  # twistd's own options, a dict
    raise SystemExit(1)
