"""The SMTP transport: a stored message to one domain's MX hosts, a smarthost or one fixed host.

The queue decides when to try and what to do with the answers; this module
only turns (envelope, message file) into one RecipientResult per recipient.
It never raises for a delivery problem: DNS trouble, refused connections,
timeouts, TLS failures and surprises all become per-recipient 4xx/5xx results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.logger import Logger

from mailgate.core.errors import DeliveryError
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.net.dns import MXResolver
from mailgate.outbound.connection_cache import ConnectionCache, Key, OpenSession
from mailgate.outbound.smtp_client import BodyProducer, ClientProtocol, SessionClosed, Timeouts, wire_size
from mailgate.outbound.transport import DeliveryJob, RecipientResult, same_result

TLS_MODES = ("none", "opportunistic", "verify")
SCHEMES = ("mx", "smtp")  # the routes this transport delivers
RFC_5321_TIMEOUTS = Timeouts()
log = Logger()


def _result(reply: Reply, recipient: str, host: str) -> RecipientResult:
    """A remote reply for one recipient; a server without RFC 2034 codes gets X.0.0."""
    if not reply.enhanced:
        reply = Reply(reply.code, f"{reply.code // 100}.0.0", reply.text)
    return RecipientResult(recipient, reply, host)


class _FinalReplyLost(SessionClosed):
    """The whole message and its dot went out, and no reply came back (timeout,
    connection lost): the server may have taken the message (RFC 5321 4.5.3.2)."""


class _SetupFailed(DeliveryError):
    """The host could not start a session: try the next address or MX host.

    `tls` marks a failed handshake, after which "opportunistic" retries the
    same address in plain text.
    """

    def __init__(self, enhanced: str, text: str, *, tls: bool = False) -> None:
        super().__init__(text, code=451, enhanced=enhanced)
        self.tls = tls


@dataclass(frozen=True)
class _Job:
    mail_from: str
    recipients: tuple[str, ...]
    message_path: str


def _where(key: Key) -> str:
    host, address, port = key
    return f"{host}[{address}]:{port}"


def _extensions(ehlo: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) -> their parameters; line 1 is the greeting."""
    pairs = (line.strip().partition(" ") for line in ehlo.text.split("\n")[1:])
    return {keyword.upper(): params for keyword, _, params in pairs}


class SMTPTransport:
    """Delivers one message to one destination over ESMTP.

    Routes `mx` (by the recipient domain's MX hosts, or the smarthost when
    `relay.smarthost` is set) and `smtp:HOST:PORT` (that host, no MX lookup).

    TLS: "none" never uses STARTTLS. "opportunistic" uses it when offered,
    without checking the certificate (RFC 7435: encryption against passive
    eavesdroppers only); if the handshake fails the same address is tried
    once more in plain text, as other MTAs do, rather than deferring mail
    for a broken TLS stack. "verify" requires STARTTLS and a certificate
    valid for the MX host name (service-identity via optionsForClientTLS);
    otherwise the host counts as failed (4.7.x) and the next one is tried.
    `client_tls_options(hostname)` replaces the default client options in
    both modes (tests pass a trust root for their self-signed certificate).
    With `connection_cache_seconds`, a session that ended cleanly waits that
    long for the next message to the same host (mailgate.outbound.connection_cache).
    Each reply is awaited under RFC 5321's timeout for its command (`timeouts`).
    """

    def __init__(self, reactor: Any, *, helo_name: str, tls_mode: str, resolver: MXResolver,
                 mx_port: int = 25, timeouts: Timeouts = RFC_5321_TIMEOUTS, connect_timeout_seconds: float = 30,
                 client_tls_options: Callable[[str], Any] | None = None,
                 connection_cache_seconds: float = 0.0, smarthost: tuple[str, int] | None = None) -> None:
        if tls_mode not in TLS_MODES:
            raise ValueError(f"tls_mode must be one of {TLS_MODES}, not {tls_mode!r}")
        self._reactor, self._helo_name, self._tls_mode = reactor, helo_name, tls_mode
        self._resolver, self._mx_port = resolver, mx_port
        self._timeouts, self._connect_timeout_seconds = timeouts, connect_timeout_seconds
        self._client_tls_options = client_tls_options
        self._cache = ConnectionCache(reactor, connection_cache_seconds)
        self._smarthost = smarthost

    def destination(self, recipient: str, route: Route) -> Hashable:
        """One connection per destination: by domain for MX, by host for smarthost and smtp:."""
        if route.scheme == "smtp":
            return route.host_port()
        if self._smarthost is not None:
            return self._smarthost
        return recipient.rpartition("@")[2]

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        envelope, path = job.envelope, job.message_path
        if isinstance(job.destination, tuple):
            host, port = job.destination
            return await self.deliver_to_host(host, port, envelope.mail_from, envelope.rcpt_to, path)
        return await self.deliver_by_mx(str(job.destination), envelope.mail_from, envelope.rcpt_to, path)

    async def close_idle(self) -> None:
        """Say QUIT on every cached session (the server is stopping)."""
        await self._cache.close_all()

    async def deliver_by_mx(self, domain: str, mail_from: str, recipients: list[str],
                            message_path: str) -> list[RecipientResult]:
        """Try the domain's MX hosts best first; the first host with a session decides."""
        job = _Job(mail_from, tuple(recipients), message_path)
        try:
            hosts = await self._resolver.mx_hosts(domain)
        except DeliveryError as error:
            return same_result(job.recipients, error.reply)
        return await self._guarded(job, hosts, self._mx_port)

    async def deliver_to_host(self, host: str, port: int, mail_from: str, recipients: list[str],
                              message_path: str) -> list[RecipientResult]:
        """Smarthost and smtp:HOST:PORT routes: one host (a name or an address), no MX lookup."""
        return await self._guarded(_Job(mail_from, tuple(recipients), message_path), [host], port)

    async def _guarded(self, job: _Job, hosts: list[str], port: int) -> list[RecipientResult]:
        """A bug here must defer the mail, not crash the queue or lose the message."""
        if not job.recipients:
            return []
        try:
            return await self._try_hosts(job, hosts, port)
        except Exception as error:
            log.failure("relay attempt to {hosts} crashed", hosts=hosts)
            return same_result(job.recipients, Reply(451, "4.3.0", f"internal error: {type(error).__name__}"))

    async def _try_hosts(self, job: _Job, hosts: list[str], port: int) -> list[RecipientResult]:
        failures: list[DeliveryError] = []
        for host in hosts:
            try:
                addresses = await self._resolver.addresses(host)
            except DeliveryError as error:
                failures.append(error)
                continue
            for address in addresses:
                try:
                    return await self._attempt(job, host, address, port)
                except _SetupFailed as failure:
                    log.info("relay: {reply}", reply=failure.text)
                    failures.append(failure)
        # Permanent only if every host was permanently unresolvable; else retry later.
        temporary = [f for f in failures if not f.permanent] or failures
        last = temporary[-1] if temporary else _SetupFailed("4.4.1", "no host to connect to")
        return same_result(job.recipients, last.reply)

    async def _attempt(self, job: _Job, host: str, address: str, port: int) -> list[RecipientResult]:
        key = (host, address, port)
        while (cached := self._cache.take(key)) is not None:
            # One that died while cached is dropped for the next, or a new connection.
            reused = await self._transact(cached, job, key)
            if reused is not None:
                return reused
        use_tls = self._tls_mode != "none"
        try:
            return await self._connect_and_run(job, key, use_tls)
        except _SetupFailed as failure:
            if not (failure.tls and self._tls_mode == "opportunistic"):
                raise
            log.info("relay: {reply}; retrying without TLS", reply=failure.text)
            return await self._connect_and_run(job, key, False)

    async def _connect_and_run(self, job: _Job, key: Key, use_tls: bool) -> list[RecipientResult]:
        """Setup problems move on to the next host; once MAIL is sent, this host answers."""
        host, address, port = key
        endpoint_type = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint = endpoint_type(self._reactor, address, port, timeout=self._connect_timeout_seconds)
        protocol = ClientProtocol(self._reactor, self._timeouts)
        try:
            await connectProtocol(endpoint, protocol)
        except Exception as error:
            raise _SetupFailed("4.4.1", f"{_where(key)}: connection failed: {error}") from error
        try:
            extensions = await self._open(protocol, host, _where(key), use_tls)
        except SessionClosed as error:
            await protocol.close(abort=True)
            raise _SetupFailed("4.4.2", f"{_where(key)}: {error}") from error
        except _SetupFailed:
            await protocol.quit(wait_for_reply=False)  # polite even when giving up
            raise
        except BaseException:
            await protocol.close(abort=True)
            raise
        results = await self._transact(OpenSession(protocol, extensions), job, key)
        assert results is not None  # only a reused session can have died unused
        return results

    async def _transact(self, session: OpenSession, job: _Job, key: Key) -> list[RecipientResult] | None:
        """MAIL to the final reply on an open session, then cache it or QUIT.

        None: a reused session died before its first reply. The body only
        ever follows a 354, so nothing can have been delivered through it
        and the message may go over another session at once.
        """
        protocol, before = session.protocol, session.protocol.replies_received
        try:
            results = await self._transaction(protocol, job, key, session.extensions)
        except SessionClosed as error:
            await protocol.close(abort=True)
            if session.transactions and protocol.replies_received == before:
                return None
            return same_result(job.recipients, Reply(451, "4.4.2", f"{_where(key)}: {error}"), key[0])
        except BaseException:
            await protocol.close(abort=True)
            raise
        session.transactions += 1
        if not self._cache.park(key, session):
            await protocol.quit()
        return results

    async def _open(self, protocol: ClientProtocol, host: str, where: str,
                    use_tls: bool) -> dict[str, str]:
        """Greeting, EHLO and STARTTLS: everything before the mail transaction."""
        greeting = await protocol.read_reply(self._timeouts.greeting, "greeting")
        if not greeting.positive:
            raise _SetupFailed("4.4.1", f"{where}: greeting: {greeting.code} {greeting.one_line}")
        extensions = await self._hello(protocol, where)
        if not use_tls:
            return extensions
        if "STARTTLS" not in extensions:
            return self._without_tls(extensions, where, "STARTTLS not offered")
        protocol.send("STARTTLS")
        reply = await protocol.read_reply(self._timeouts.command, "STARTTLS")
        if reply.code != 220:
            return self._without_tls(extensions, where, f"STARTTLS refused: {reply.code}")
        protocol.connection.startTLS(self._tls_options(host))
        try:
            return await self._hello(protocol, where)
        except SessionClosed as error:
            raise _SetupFailed("4.7.5", f"{where}: TLS failed: {error}", tls=True) from error

    def _without_tls(self, extensions: dict[str, str], where: str, why: str) -> dict[str, str]:
        """RFC 3207: plain text is fine unless relay.tls = "verify" demands TLS."""
        if self._tls_mode == "verify":
            raise _SetupFailed("4.7.4", f"{where}: {why} (relay.tls = verify)")
        return extensions

    def _tls_options(self, host: str) -> Any:
        if self._client_tls_options is not None:
            return self._client_tls_options(host)
        if self._tls_mode == "verify":
            return optionsForClientTLS(host)
        return CertificateOptions()  # verify=False: opportunistic encryption

    async def _hello(self, protocol: ClientProtocol, where: str) -> dict[str, str]:
        """EHLO, or HELO for an old server that rejects EHLO with 5xx (RFC 5321 3.2)."""
        protocol.send(f"EHLO {self._helo_name}")
        reply = await protocol.read_reply(self._timeouts.command, "EHLO")
        if reply.positive:
            return _extensions(reply)
        if reply.code >= 500:
            protocol.send(f"HELO {self._helo_name}")
            reply = await protocol.read_reply(self._timeouts.command, "HELO")
            if reply.positive:
                return {}
        raise _SetupFailed("4.4.1", f"{where}: hello: {reply.code} {reply.one_line}")

    async def _transaction(self, protocol: ClientProtocol, job: _Job, key: Key,
                           extensions: dict[str, str]) -> list[RecipientResult]:
        """MAIL, RCPTs, DATA (all in one write with PIPELINING), body, final reply."""
        host, timeouts = key[0], self._timeouts
        params = [f"SIZE={wire_size(job.message_path)}"] if "SIZE" in extensions else []
        params += ["BODY=8BITMIME"] if "8BITMIME" in extensions else []
        mail = " ".join([f"MAIL FROM:<{job.mail_from}>", *params])
        rcpts = [f"RCPT TO:<{recipient}>" for recipient in job.recipients]
        if "PIPELINING" in extensions:
            protocol.send(mail, *rcpts, "DATA")  # RFC 2920: DATA may end the batch
            mail_reply = await protocol.read_reply(timeouts.mail, "MAIL")
            rcpt_replies = [await protocol.read_reply(timeouts.rcpt, "RCPT") for _ in rcpts]
            data_reply: Reply | None = await protocol.read_reply(timeouts.data_init, "DATA")
        else:
            mail_reply, rcpt_replies, data_reply = await self._lockstep(protocol, mail, rcpts)
        if not mail_reply.positive:
            await self._abandon(protocol, data_reply)
            return [_result(mail_reply, r, host) for r in job.recipients]
        if not any(reply.positive for reply in rcpt_replies):
            await self._abandon(protocol, data_reply)
            return [_result(reply, r, host) for r, reply in zip(job.recipients, rcpt_replies)]
        try:
            final = await self._data(protocol, job, data_reply)
        except _FinalReplyLost as lost:
            return _maybe_delivered(job, rcpt_replies, key, lost)
        return [_result(final if reply.positive else reply, r, host)
                for r, reply in zip(job.recipients, rcpt_replies)]

    async def _lockstep(self, protocol: ClientProtocol, mail: str,
                        rcpts: list[str]) -> tuple[Reply, list[Reply], Reply | None]:
        """Without PIPELINING: one command, one reply; DATA only if someone was accepted."""
        timeouts = self._timeouts
        protocol.send(mail)
        mail_reply = await protocol.read_reply(timeouts.mail, "MAIL")
        if not mail_reply.positive:
            return mail_reply, [], None
        rcpt_replies = []
        for rcpt in rcpts:
            protocol.send(rcpt)
            rcpt_replies.append(await protocol.read_reply(timeouts.rcpt, "RCPT"))
        if not any(reply.positive for reply in rcpt_replies):
            return mail_reply, rcpt_replies, None
        protocol.send("DATA")
        return mail_reply, rcpt_replies, await protocol.read_reply(timeouts.data_init, "DATA")

    async def _data(self, protocol: ClientProtocol, job: _Job, data_reply: Reply | None) -> Reply:
        """Send the body after 354 and return the final reply (or DATA's refusal).

        _FinalReplyLost once the dot has gone: from then on the server may
        have the message, whatever happens to the connection.
        """
        assert data_reply is not None
        if data_reply.code != 354:
            if data_reply.code >= 400:
                return data_reply
            return Reply(451, "4.5.0", f"unexpected reply to DATA: {data_reply.code}")
        with open(job.message_path, "rb") as handle:
            await BodyProducer(handle, protocol).start()
        try:
            return await protocol.read_reply(self._timeouts.data_end, "end of data")
        except SessionClosed as error:
            why = str(error)  # a timeout names the end of data already; a lost connection does not
            raise _FinalReplyLost(why if why.startswith("end of data") else f"end of data: {why}") from error

    async def _abandon(self, protocol: ClientProtocol, data_reply: Reply | None) -> None:
        """Nobody to deliver to: end a DATA the server wrongly accepted, then RSET."""
        if data_reply is not None and data_reply.code == 354:
            protocol.connection.write(b".\r\n")  # RFC 2920 3.1: an empty message, rejected
            await protocol.read_reply(self._timeouts.data_end, "end of data")
        protocol.send("RSET")
        await protocol.read_reply(self._timeouts.command, "RSET")


def _maybe_delivered(job: _Job, rcpt_replies: list[Reply], key: Key,
                     lost: _FinalReplyLost) -> list[RecipientResult]:
    """The accepted recipients' reply after the dot never came: deferred, and marked
    as Postfix does ("message may be sent more than once"); refused ones keep their reply."""
    host = key[0]
    reply = Reply(451, "4.4.2", f"{_where(key)}: {lost}; the message may have been delivered")
    return [RecipientResult(recipient, reply, host, maybe_delivered=True) if answer.positive
            else _result(answer, recipient, host)
            for recipient, answer in zip(job.recipients, rcpt_replies)]
