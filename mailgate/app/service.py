"""The running gateway: listeners and shared resources, started and stopped in order."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailgate.accounts.cred import build_portal
from mailgate.app import preflight
from mailgate.config import ConfigError, GatewayConfig, ListenConfig
from mailgate.hooks.calling import Hooks
from mailgate.inbound.transaction import Deliverer
from mailgate.app.periodic import Periodic
from mailgate.limits.admission import Admission, AdmissionGate
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.limits.state import shared_admission, shared_throttle
from mailgate.app.pipeline import build_pipeline
from mailgate.net.accept_backoff import AcceptBackoff, pause_on_exhaustion
from mailgate.net.proxy_protocol import ProxyHeaderFactory
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.smtp_transport import SMTPTransport
from mailgate.smtp.factory import SMTPFactory
from mailgate.smtp.policy import ListenerPolicy
from mailgate.store.durable import Owner
from mailgate.accounts.users_file import Accounts

log = Logger()

DISK_THREADS = 32  # fsync waits on the disk, not the CPU: many may overlap
SHUTDOWN_GRACE_SECONDS = 10.0
REQUEST_POLL_SECONDS = 1.0  # how soon `mailgate queue flush|delete` is noticed


class GatewayService(MultiService):
    """Owns the listeners, the disk thread pool and the sessions' orderly end.

    Everything touching the file system or a port is built in
    privilegedStartService, after twistd has applied --rundir (relative
    paths are relative to it) and before it drops --uid/--gid (so ports
    below 1024 can be bound).
    """

    def __init__(
        self, config: GatewayConfig, hooks: Hooks, reactor: Any, configured: Deferred,
        owner: Owner | None = None, twistd: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.owner = owner  # twistd's --uid/--gid: who gets the directories and files made as root
        self.twistd = twistd  # twistd's own options, when it runs us: its status pipe, for start-up errors
        self._configured = configured
        self.config = config
        self.hooks = hooks
        self.reactor = reactor
        self.threadpool = ThreadPool(minthreads=0, maxthreads=DISK_THREADS, name="mailgate-disk")
        self.factories: list[Any] = []
        self.outbound: Scheduler | None = None
        self.relay: SMTPTransport | None = None
        self._requests: Periodic | None = None
        self.ports: dict[str, Any] = {}  # listener name -> IListeningPort, once bound
        self._backoffs: list[AcceptBackoff] = []
        self._tls: Any = None  # the listeners' TLS context factory, when one uses TLS
        self._previous_sighup: Any = None  # the handler before ours, put back at stop
        self.role: Any = None  # a worker's WorkerRole (server.workers > 1, mailgate.app.worker)

    def run_blocking(self, function: Any, *args: Any) -> Deferred:
        """Run a call that blocks on the disk in the disk thread pool."""
        return deferToThreadPool(self.reactor, self.threadpool, function, *args)

    def privilegedStartService(self) -> None:
        self._tls = self._prepare_files()
        if self._configured.called:
            self._build_listeners()  # children bound by super(), before privileges drop
        else:
            self._configured.addCallbacks(lambda _: self._build_listeners(), self._configure_failed)
        super().privilegedStartService()

    def _configure_failed(self, failure: Any) -> None:
        log.critical("plugins: mailgate_configure failed: {error}", error=failure.getErrorMessage())
        self.reactor.stop()

    def _prepare_files(self) -> Any:
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
        tls_options = self._tls
        pipeline = build_pipeline(self.config, self.hooks, self.reactor, self.run_blocking)
        self.outbound, self.relay, deliverer = pipeline.scheduler, pipeline.smtp, pipeline.deliverer
        self.accounts = Accounts(self.config.users.file)
        self.portal = build_portal(self.accounts, self.reactor)
        self.throttle = shared_throttle(AuthThrottle.from_limits(self.config.limits, self.reactor))  # SMTP AUTH, POP3
        self.admission = shared_admission(self._admission())  # one for every listener: the limits hold per server
        for index, listener in enumerate(self.config.listen):
            factory = self._factory(listener, deliverer, tls_options)
            self.factories.append(factory)
            if listener.tls == "implicit":
                factory = TLSMemoryBIOFactory(tls_options, False, factory)
            if listener.proxy:  # the header comes first, before any TLS handshake
                factory = ProxyHeaderFactory(factory, listener.proxy, self.reactor, listener.name)
            self._listen(index, listener, AdmissionGate(factory, self.admission))
        if self.running:  # configured late: startService has already run
            self._start_queue(pipeline.scheduler)

    def _admission(self) -> Admission:
        admission = Admission(self.config.limits, self.reactor)
        log.info("connections: at most {count} at once ({per_ip} per address), RLIMIT_NOFILE {descriptors}",
                 count=admission.max_connections, per_ip=self.config.limits.max_connections_per_ip,
                 descriptors=admission.descriptors)
        if admission.max_connections >= admission.descriptors:
            log.warn("limits.max_connections: {count} is not below RLIMIT_NOFILE ({descriptors}): descriptors "
                     "may run out first", count=admission.max_connections, descriptors=admission.descriptors)
        return admission

    def _start_queue(self, scheduler: Scheduler) -> None:
        """Lock the spool, resume what is queued, and serve the CLI's requests."""
        if self.role is not None and not self.role.owns_queue(scheduler):
            return  # another worker runs the queue
        store = scheduler.store
        try:
            locked = store.lock()
        except OSError as error:
            self._fail_startup(f"server.state_dir: cannot lock the queue: {error.filename}: {error.strerror}")
        if not locked:
            log.critical("server.state_dir: {dir} is in use by another running mailgate", dir=store.directory)
            self.reactor.stop()
            return
        Deferred.fromCoroutine(scheduler.start()).addErrback(
            lambda f: log.failure("queue: could not resume the spool", f)
        )
        self._requests = Periodic("queue requests (mailgate queue flush|delete)", scheduler.serve_requests,
                                  self.reactor, REQUEST_POLL_SECONDS)
        self._requests.start(now=False)

    def _factory(self, listener: ListenConfig, deliverer: Deliverer, tls_options: Any) -> Factory[Any]:
        if listener.protocol == "pop3":
            return self._pop3_factory(listener, tls_options)
        return SMTPFactory(ListenerPolicy(
            self.config, listener, self.hooks, deliverer, self.reactor,
            tls_options, portal=self.portal, throttle=self.throttle, admission=self.admission,
        ))

    def _pop3_factory(self, listener: ListenConfig, tls_options: Any) -> Factory:
        from mailgate.pop3.session import POP3Factory

        return POP3Factory(
            accounts=self.accounts,
            maildir_root=self.config.store.maildir_root,
            hostname=self.config.server.hostname,
            tls_options=tls_options if listener.tls == "starttls" else None,
            plaintext_auth=self.config.security.plaintext_auth,
            reactor=self.reactor,
            throttle=self.throttle,
            portal=self.portal,
            admission=self.admission,
        )

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
        self.threadpool.start()
        if self.outbound is not None:
            self._start_queue(self.outbound)
        super().startService()
        log.info("mailgate started: {count} listener(s)", count=len(self.config.listen))

    def _hold_sighup(self) -> None:
        """SIGHUP's default action ends the process, with no clean stop: until reload
        exists (SPEC 0.2 "Reload"), it only says so, so that `kill -HUP` or
        `systemctl reload` never stops the server."""
        def on_sighup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(log.warn, "SIGHUP: reload is not supported yet; configuration unchanged")

        try:
            self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        except ValueError:  # not the main thread (a test driving the service): no signals here
            self._previous_sighup = None

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
        if self._requests is not None and self._requests.running:
            self._requests.stop()
        if self.outbound is not None:
            await self.outbound.stop()
            if self.relay is not None:
                await self.relay.close_idle()
            self.outbound.store.unlock()
        self.threadpool.stop()
        log.info("mailgate stopped cleanly")

    def _fail_startup(self, *problems: str) -> NoReturn:
        fail_startup(problems, self.twistd)

    def _abort_sessions(self) -> None:
        for factory in self.factories:
            for session in list(getattr(factory, "sessions", ())):
                session.transport.abortConnection()


class ListenerService(StreamServerEndpointService):
    """One [[listen]] table's port: bound before privileges drop, a failure stopping start-up."""

    def __init__(self, endpoint: Any, factory: Factory[Any], index: int, listener: ListenConfig,
                 gateway: GatewayService) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True  # a port in use must stop start-up, not just log
        self._index, self._listener, self._gateway = index, listener, gateway

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as exc:
            self._gateway._fail_startup(f"listen[{self._index}].endpoint: cannot listen on "
                                        f"{self._listener.endpoint}: {exc.socketError}")
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._gateway._bound, self._listener)


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
