"""The running gateway: listeners and shared resources, started and stopped in order."""

from __future__ import annotations

import sys

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailgate.accounts.cred import build_portal
from mailgate.config import GatewayConfig, ListenConfig
from mailgate.hooks.calling import Hooks
from mailgate.inbound.transaction import Deliverer
from mailgate.limits.admission import Admission, AdmissionGate
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.app.pipeline import build_pipeline
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.smtp_transport import SMTPTransport
from mailgate.smtp.factory import SMTPFactory
from mailgate.smtp.policy import ListenerPolicy
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
        self, config: GatewayConfig, hooks: Hooks, reactor: Any, configured: Deferred
    ) -> None:
        super().__init__()
        self._configured = configured
        self.config = config
        self.hooks = hooks
        self.reactor = reactor
        self.threadpool = ThreadPool(minthreads=0, maxthreads=DISK_THREADS, name="mailgate-disk")
        self.factories: list[Any] = []
        self.outbound: Scheduler | None = None
        self.relay: SMTPTransport | None = None
        self._requests: LoopingCall | None = None
        self.ports: dict[str, Any] = {}  # listener name -> IListeningPort, once bound

    def run_blocking(self, function: Any, *args: Any) -> Deferred:
        """Run a call that blocks on the disk in the disk thread pool."""
        return deferToThreadPool(self.reactor, self.threadpool, function, *args)

    def privilegedStartService(self) -> None:
        if self._configured.called:
            self._build_listeners()  # children bound by super(), before privileges drop
        else:
            self._configured.addCallbacks(lambda _: self._build_listeners(), self._configure_failed)
        super().privilegedStartService()

    def _configure_failed(self, failure: Any) -> None:
        log.critical("plugins: mailgate_configure failed: {error}", error=failure.getErrorMessage())
        self.reactor.stop()

    def _build_listeners(self) -> None:
        tls_options = self._tls_options()
        pipeline = build_pipeline(self.config, self.hooks, self.reactor, self.run_blocking)
        self.outbound, self.relay, deliverer = pipeline.scheduler, pipeline.smtp, pipeline.deliverer
        self.accounts = Accounts(self.config.users.file)
        self.portal = build_portal(self.accounts, self.reactor)
        self.throttle = AuthThrottle.from_limits(self.config.limits, self.reactor)  # SMTP AUTH and POP3 share it
        self.admission = self._admission()  # one for every listener: the limits hold per server
        for index, listener in enumerate(self.config.listen):
            factory = self._factory(listener, deliverer, tls_options)
            self.factories.append(factory)
            if listener.tls == "implicit":
                factory = TLSMemoryBIOFactory(tls_options, False, factory)
            self._listen(index, listener, AdmissionGate(factory, self.admission))
        if self.running:  # configured late: startService has already run
            self._start_queue()

    def _admission(self) -> Admission:
        admission = Admission(self.config.limits, self.reactor)
        log.info("connections: at most {count} at once ({per_ip} per address), RLIMIT_NOFILE {descriptors}",
                 count=admission.max_connections, per_ip=self.config.limits.max_connections_per_ip,
                 descriptors=admission.descriptors)
        if admission.max_connections >= admission.descriptors:
            log.warn("limits.max_connections: {count} is not below RLIMIT_NOFILE ({descriptors}): descriptors "
                     "may run out first", count=admission.max_connections, descriptors=admission.descriptors)
        return admission

    def _start_queue(self) -> None:
        """Lock the spool, resume what is queued, and serve the CLI's requests."""
        store = self.outbound.store
        if not store.lock():
            log.critical("server.state_dir: {dir} is in use by another running mailgate", dir=store.directory)
            self.reactor.stop()
            return
        Deferred.fromCoroutine(self.outbound.start()).addErrback(
            lambda f: log.failure("queue: could not resume the spool", f)
        )
        self._requests = LoopingCall(self.outbound.serve_requests)
        self._requests.clock = self.reactor
        self._requests.start(REQUEST_POLL_SECONDS, now=False)

    def _tls_options(self) -> Any:
        if all(listener.tls == "none" for listener in self.config.listen):
            return None
        from mailgate.net.tls import ensure_certificate, server_tls_options

        cert, key = self.config.tls.certificate, self.config.tls.key
        if ensure_certificate(cert, key, self.config.server.hostname):
            log.warn("tls.certificate: {cert} was missing: generated a self-signed certificate", cert=cert)
        return server_tls_options(cert, key)

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
        endpoint = serverFromString(self.reactor, listener.endpoint)
        service = StreamServerEndpointService(endpoint, factory)
        service._raiseSynchronously = True  # a port in use must stop start-up, not just log
        service.setName(f"listen.{listener.name}")
        service.setServiceParent(self)
        original = service.privilegedStartService

        def bind() -> None:
            try:
                original()
            except CannotListenError as exc:
                _fail_startup(f"listen[{index}].endpoint: cannot listen on {listener.endpoint}: {exc.socketError}")
            service._waitingForPort.addCallback(self._bound, listener)

        service.privilegedStartService = bind

    def _bound(self, port: Any, listener: ListenConfig) -> Any:
        self.ports[listener.name] = port
        log.info("listening: {name} ({protocol}, tls={tls}) on {address}",
                 name=listener.name, protocol=listener.protocol, tls=listener.tls, address=port.getHost())
        return port

    def startService(self) -> None:
        self.threadpool.start()
        if self.outbound is not None:
            self._start_queue()
        super().startService()
        log.info("mailgate started: {count} listener(s)", count=len(self.config.listen))

    def stopService(self) -> Deferred:
        """Stop accepting, end sessions (deliveries in flight finish), then the disk pool."""
        log.info("mailgate stopping: closing listeners and {count} session(s)",
                 count=sum(len(getattr(f, "sessions", ())) for f in self.factories))
        d = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
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

    def _abort_sessions(self) -> None:
        for factory in self.factories:
            for session in list(getattr(factory, "sessions", ())):
                session.transport.abortConnection()


def _fail_startup(problem: str) -> None:
    """One line naming the key, on the real stderr and in the log, then exit 1.

    twistd has already pointed sys.stderr at its log by now, so the line
    goes to both: the operator at the terminal and the log reader see it.
    """
    log.critical("{problem}", problem=problem)
    print(problem, file=sys.__stderr__)
    raise SystemExit(1)
