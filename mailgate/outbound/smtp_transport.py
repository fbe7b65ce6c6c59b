"""The SMTP transport: a stored message to one domain's MX hosts, a smarthost or one fixed host.

The queue decides when to try and what to do with the answers; this module
only turns (envelope, message file) into one RecipientResult per recipient.
It never raises for a delivery problem: DNS trouble, refused connections,
timeouts, TLS failures and surprises all become per-recipient 4xx/5xx results.
Which hosts, in which order, over what TLS, from which source address and
within which destination's budget is decided here; the commands are
mailgate.outbound.smtp_dialogue's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectBindError
from twisted.logger import Logger

from mailgate.config import RelayConfig
from mailgate.core.dsn import DSNRequest
from mailgate.core.errors import DeliveryError
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.hooks.calling import HookFailed
from mailgate.net.dns import MXResolver
from mailgate.outbound.connection_cache import ConnectionCache, OpenSession
from mailgate.outbound.pools import NO_POOLS, Pool, Pools
from mailgate.outbound.shaping import Site, Sites
from mailgate.outbound.smtp_client import ClientProtocol, SessionClosed, Timeouts
from mailgate.outbound.smtp_dialogue import (
    AuthRefused, Credentials, Dialogue, HostTLS, Key, MailJob, SetupFailed, where,
)
from mailgate.outbound.tls_policy import HostTLSFor, TLSPolicy
from mailgate.outbound.transport import DeliveryJob, RecipientResult, same_result

TLS_MODES = ("none", "opportunistic", "verify")
SCHEMES = ("mx", "smtp")  # the routes this transport delivers
RFC_5321_TIMEOUTS = Timeouts()
log = Logger()

@dataclass(frozen=True)
class _Plan:
    """How one delivery goes: whose budget, from which pool, with what TLS per host, AUTH or not."""

    site: Site
    pool: Pool | None
    tls_for: HostTLSFor
    credentials: Credentials | None = None


class SMTPTransport:
    """Delivers one message to one destination over ESMTP.

    Routes `mx` (by the recipient domain's MX hosts, or the smarthost when
    `relay.smarthost` is set) and `smtp:HOST:PORT` (that host, no MX lookup).

    TLS per host comes from `tls_policy` (mailgate.outbound.tls_policy): by
    default `relay.tls`, where "opportunistic" retries an address once in
    plain text after a failed handshake, as other MTAs do, and "verify"
    needs a certificate valid for the host name (4.7.x and the next host
    otherwise). `smarthost_credentials`: AUTH to the smarthost, only over
    TLS. `pools` chooses the source addresses and EHLO name per message;
    `relay` holds the [relay.destination] limits, kept per destination
    (mailgate.outbound.shaping). With `connection_cache_seconds`, a session
    that ended cleanly waits that long for the next message to the same
    host (mailgate.outbound.connection_cache). Each reply is awaited under
    RFC 5321's timeout for its command (`timeouts`).
    """

    def __init__(self, reactor: Any, *, helo_name: str, tls_mode: str, resolver: MXResolver,
                 mx_port: int = 25, timeouts: Timeouts = RFC_5321_TIMEOUTS, connect_timeout_seconds: float = 30,
                 client_tls_options: Callable[[str], Any] | None = None,
                 connection_cache_seconds: float = 0.0, smarthost: tuple[str, int] | None = None,
                 smarthost_credentials: Credentials | None = None, pools: Pools = NO_POOLS,
                 relay: RelayConfig | None = None, tls_policy: TLSPolicy | None = None) -> None:
        if tls_mode not in TLS_MODES:
            raise ValueError(f"tls_mode must be one of {TLS_MODES}, not {tls_mode!r}")
        relay = relay if relay is not None else RelayConfig()
        self._reactor, self._helo_name = reactor, helo_name
        self._resolver, self._mx_port = resolver, mx_port
        self._timeouts, self._connect_timeout_seconds = timeouts, connect_timeout_seconds
        self._dialogue = Dialogue(timeouts)
        self._cache = ConnectionCache(reactor, connection_cache_seconds)
        self._sites = Sites(relay, reactor, self._cache)
        self._smarthost, self._credentials, self._pools = smarthost, smarthost_credentials, pools
        self._tls = tls_policy if tls_policy is not None else TLSPolicy(
            tls_mode, client_tls_options=client_tls_options, smarthost_tls=relay.smarthost_tls)

    def destination(self, recipient: str, route: Route) -> Hashable:
        """One connection per destination: by domain for MX, by host for smarthost and smtp:."""
        if route.scheme == "smtp":
            return route.host_port()
        if self._smarthost is not None:
            return self._smarthost
        return recipient.rpartition("@")[2]

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        envelope, path = job.envelope, job.message_path
        try:
            pool = await self._pools.choose(envelope) if self._pools else None
        except HookFailed as failure:  # fail closed: never from an address the plugin did not choose
            reply = Reply(451, "4.3.0", f"plugin {failure.plugin} failed: {failure.problem}")
            return same_result(envelope.rcpt_to, reply)
        dsn = DSNRequest.of(envelope.parameters, envelope.recipient_parameters)
        utf8 = "SMTPUTF8" in envelope.parameters
        if isinstance(job.destination, tuple):
            host, port = job.destination
            results = await self.deliver_to_host(host, port, envelope.mail_from, envelope.rcpt_to, path, pool=pool,
                                                 dsn=dsn, smtputf8=utf8, wire_size=job.wire_size)
        else:
            results = await self.deliver_by_mx(str(job.destination), envelope.mail_from, envelope.rcpt_to, path,
                                               pool=pool, dsn=dsn, smtputf8=utf8, wire_size=job.wire_size)
        if pool is None:
            return results
        return [replace(result, reporting_mta=pool.helo) for result in results]

    async def close_idle(self) -> None:
        """Say QUIT on every cached session (the server is stopping)."""
        await self._cache.close_all()

    async def deliver_by_mx(self, domain: str, mail_from: str, recipients: list[str], message_path: str,
                            *, pool: Pool | None = None, dsn: DSNRequest = DSNRequest(),
                            smtputf8: bool = False, wire_size: int | None = None) -> list[RecipientResult]:
        """Try the domain's MX hosts best first; the first host with a session decides."""
        job = MailJob(mail_from, tuple(recipients), message_path, dsn, smtputf8, wire_size)
        try:
            hosts = await self._resolver.mx_hosts(domain)
            hosts, tls_for = await self._tls.for_mx(domain, hosts, self._mx_port)
        except DeliveryError as error:
            return same_result(job.recipients, error.reply)
        names = tuple(sorted(hosts))
        site = self._sites.site(("mx", names), domain, f"{domain} (MX {', '.join(names)})")
        return await self._guarded(job, hosts, self._mx_port, _Plan(site, pool, tls_for))

    async def deliver_to_host(self, host: str, port: int, mail_from: str, recipients: list[str],
                              message_path: str, *, pool: Pool | None = None,
                              dsn: DSNRequest = DSNRequest(), smtputf8: bool = False,
                              wire_size: int | None = None) -> list[RecipientResult]:
        """Smarthost and smtp:HOST:PORT routes: one host (a name or an address), no MX lookup."""
        smarthost = self._smarthost == (host, port)
        site = self._sites.site(("smarthost" if smarthost else "smtp", host, port), host, f"{host}:{port}")
        tls = self._tls.for_smarthost(host, self._credentials is not None) if smarthost else self._tls.for_host(host)
        plan = _Plan(site, pool, _always(tls), self._credentials if smarthost else None)
        job = MailJob(mail_from, tuple(recipients), message_path, dsn, smtputf8, wire_size)
        return await self._guarded(job, [host], port, plan)

    async def _guarded(self, job: MailJob, hosts: list[str], port: int, plan: _Plan) -> list[RecipientResult]:
        """A bug here must defer the mail, not crash the queue or lose the message."""
        if not job.recipients:
            return []
        try:
            await plan.site.message()  # relay.destination rate
            return await self._try_hosts(job, hosts, port, plan)
        except Exception as error:
            log.failure("relay attempt to {hosts} crashed", hosts=hosts)
            return same_result(job.recipients, Reply(451, "4.3.0", f"internal error: {type(error).__name__}"))

    async def _try_hosts(self, job: MailJob, hosts: list[str], port: int, plan: _Plan) -> list[RecipientResult]:
        failures: list[DeliveryError] = []
        for host in hosts:
            try:
                addresses = await self._resolver.addresses(host)
                tls = await plan.tls_for(host)
            except DeliveryError as error:
                failures.append(error)
                continue
            for address in addresses:
                try:
                    return await self._attempt(job, host, address, port, plan, tls)
                except SetupFailed as failure:
                    log.info("relay: {reply}", reply=failure.text)
                    failures.append(failure)
        # Permanent only if every host was permanently unresolvable; else retry later.
        temporary = [f for f in failures if not f.permanent] or failures
        last = temporary[-1] if temporary else SetupFailed("4.4.1", "no host to connect to")
        return same_result(job.recipients, last.reply)

    async def _attempt(self, job: MailJob, host: str, address: str, port: int, plan: _Plan,
                       tls: HostTLS) -> list[RecipientResult]:
        key: Key = (plan.pool.name if plan.pool else "", host, address, port)
        cached = await plan.site.acquire(key)  # the destination's budget: one connection
        try:
            while cached is not None:
                # One that died while cached is dropped for the next, or a new connection.
                reused = await self._transact(cached, job, key)
                if reused is not None:
                    return reused
                cached = self._cache.take(key)
            try:
                return await self._connect_and_run(job, key, plan, tls)
            except SetupFailed as failure:
                if not (failure.tls and tls.mode == "opportunistic"):
                    raise
                log.info("relay: {reply}; retrying without TLS", reply=failure.text)
                return await self._connect_and_run(job, key, plan, replace(tls, mode="none"))
        finally:
            plan.site.release()

    async def _connect_and_run(self, job: MailJob, key: Key, plan: _Plan, tls: HostTLS) -> list[RecipientResult]:
        """Setup problems move on to the next host; once MAIL is sent, this host answers."""
        protocol = await self._connect(key, plan.pool, tls)
        protocol.on_reply = plan.site.heard
        helo = plan.pool.helo if plan.pool is not None else self._helo_name
        try:
            extensions = await self._dialogue.open(protocol, key[1], key, tls, helo, plan.credentials)
        except SessionClosed as error:
            await protocol.close(abort=True)
            raise SetupFailed("4.4.2", f"{where(key)}: {error}") from error
        except (SetupFailed, AuthRefused) as failure:
            await protocol.quit(wait_for_reply=False)  # polite even when giving up
            if isinstance(failure, AuthRefused):  # 535: the credentials, not the host: every recipient's answer
                return same_result(job.recipients, Reply(failure.code, failure.enhanced, failure.text), key[1])
            raise
        except BaseException:
            await protocol.close(abort=True)
            raise
        results = await self._transact(OpenSession(protocol, extensions, site=plan.site), job, key)
        assert results is not None  # only a reused session can have died unused
        return results

    async def _connect(self, key: Key, pool: Pool | None, tls: HostTLS) -> ClientProtocol:
        """A connected ClientProtocol, bound to the pool's next address that binds (then the others)."""
        _pool, _host, address, port = key
        sources: list[str | None] = list(pool.sources(":" in address)) if pool is not None else [None]
        if pool is not None and not sources:
            raise SetupFailed("4.4.1", f"{where(key)}: pool {pool.name} has no IPv{6 if ':' in address else 4} "
                                       "address")
        for source in sources:
            endpoint_type = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint: Any = endpoint_type(self._reactor, address, port, timeout=self._connect_timeout_seconds,
                                          bindAddress=(source, 0) if source else None)
            if tls.implicit:
                endpoint = wrapClientTLS(tls.options(), endpoint)
            protocol = ClientProtocol(self._reactor, self._timeouts)
            try:
                await connectProtocol(endpoint, protocol)
            except ConnectBindError as error:
                log.warn("relay: pool {pool}: cannot bind {source}: {error}; trying its next address",
                         pool=pool.name if pool else "", source=source, error=error)
                continue
            except Exception as error:
                raise SetupFailed("4.4.1", f"{where(key)}: connection failed: {error}") from error
            return protocol
        raise SetupFailed("4.4.1", f"{where(key)}: pool {pool.name if pool else ''}: no address could be bound")

    async def _transact(self, session: OpenSession, job: MailJob, key: Key) -> list[RecipientResult] | None:
        """MAIL to the final reply on an open session, then cache it or QUIT.

        None: a reused session died before its first reply. The body only
        ever follows a 354, so nothing can have been delivered through it
        and the message may go over another session at once.
        """
        protocol, before = session.protocol, session.protocol.replies_received
        try:
            results = await self._dialogue.transaction(protocol, job, key, session.extensions)
        except SessionClosed as error:
            await protocol.close(abort=True)
            if session.transactions and protocol.replies_received == before:
                return None
            return same_result(job.recipients, Reply(451, "4.4.2", f"{where(key)}: {error}"), key[1])
        except BaseException:
            await protocol.close(abort=True)
            raise
        session.transactions += 1
        if not self._cache.park(key, session):
            await protocol.quit()
        return results


def _always(tls: HostTLS) -> HostTLSFor:
    async def tls_for(host: str) -> HostTLS:
        return tls
    return tls_for
