"""One outbound SMTP session's dialogue: greeting, EHLO, STARTTLS and AUTH, then each mail transaction.

The transport chooses the host, the connection and what TLS the host needs
(`HostTLS`); this module says the commands and reads the replies. Problems
before MAIL FROM are `SetupFailed` (the next address or host may do
better) or `AuthRefused` (the smarthost turned our credentials down); from
MAIL FROM on, the host's replies are the recipients' results.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger

from mailgate.core.dsn import DSNRequest
from mailgate.core.errors import DeliveryError
from mailgate.core.reply import Reply
from mailgate.outbound.smtp_client import BodyProducer, ClientProtocol, SessionClosed, Timeouts, wire_size
from mailgate.outbound.transport import RecipientResult

log = Logger()

Key = tuple[str, str, str, int]  # pool name ("" for none), host name, address, port


@dataclass(frozen=True)
class HostTLS:
    """What TLS one host needs, and who asks for it (named in the error when it can't be had).

    `mode`: "none" never says STARTTLS; "opportunistic" uses it when offered
    and, if the handshake fails, tries the address once more in plain text;
    "required" needs it to succeed, with `options` (which may verify the
    certificate), or the host counts as failed (`enhanced` when STARTTLS is
    not offered, 4.7.5 when the handshake fails): never plain text. `implicit`: TLS from the first byte (smarthost_tls = implicit).
    `testing`: MTA-STS in testing mode; logged when the host gets mail
    without TLS.
    """

    mode: str = "opportunistic"
    options: Callable[[], Any] = CertificateOptions  # a client connection creator for this host
    why: str = ""
    enhanced: str = "4.7.5"
    implicit: bool = False
    testing: str | None = None


@dataclass(frozen=True)
class Credentials:
    """AUTH to the smarthost (RFC 4954); the password never reaches a log line."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class MailJob:
    mail_from: str
    recipients: tuple[str, ...]
    message_path: str
    dsn: DSNRequest = DSNRequest()  # passed on where the host offers DSN (RFC 3461 5.2)
    smtputf8: bool = False  # the sender said SMTPUTF8: only a host that offers it may have the message
    wire_size: int | None = None  # the CRLF size, if the queue knows it; else SIZE= reads the file


class SetupFailed(DeliveryError):
    """The host could not start a session: try the next address or MX host.

    `tls` marks a failed handshake, after which "opportunistic" retries the
    same address in plain text.
    """

    def __init__(self, enhanced: str, text: str, *, tls: bool = False) -> None:
        super().__init__(text, code=451, enhanced=enhanced)
        self.tls = tls


class AuthRefused(DeliveryError):
    """The smarthost refused AUTH: its reply is every recipient's (535: permanent, in the bounce)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text, code=reply.code, enhanced=reply.enhanced or f"{reply.code // 100}.7.8")


class FinalReplyLost(SessionClosed):
    """The whole message and its dot went out, and no reply came back (timeout,
    connection lost): the server may have taken the message (RFC 5321 4.5.3.2)."""


def where(key: Key) -> str:
    _pool, host, address, port = key
    return f"{host}[{address}]:{port}"


def result(reply: Reply, recipient: str, host: str) -> RecipientResult:
    """A remote reply for one recipient; a server without RFC 2034 codes gets X.0.0."""
    if not reply.enhanced:
        reply = Reply(reply.code, f"{reply.code // 100}.0.0", reply.text)
    return RecipientResult(recipient, reply, host)


def _extensions(ehlo: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) -> their parameters; line 1 is the greeting."""
    pairs = (line.strip().partition(" ") for line in ehlo.text.split("\n")[1:])
    return {keyword.upper(): params for keyword, _, params in pairs}


class Dialogue:
    """The commands of one session, each reply awaited under its RFC 5321 timeout."""

    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts

    async def open(self, protocol: ClientProtocol, host: str, key: Key, tls: HostTLS, helo: str,
                   credentials: Credentials | None = None) -> dict[str, str]:
        """Greeting, EHLO, STARTTLS and AUTH: everything before the mail transaction."""
        here = where(key)
        greeting = await protocol.read_reply(self._timeouts.greeting, "greeting")
        if not greeting.positive:
            raise SetupFailed("4.4.1", f"{here}: greeting: {greeting.code} {greeting.one_line}")
        extensions = await self._hello(protocol, here, helo)
        if tls.mode != "none" and not tls.implicit:
            extensions = await self._starttls(protocol, host, here, tls, helo, extensions)
        if credentials is not None:
            await self._authenticate(protocol, here, extensions, credentials)
        return extensions

    async def _starttls(self, protocol: ClientProtocol, host: str, here: str, tls: HostTLS, helo: str,
                        extensions: dict[str, str]) -> dict[str, str]:
        if "STARTTLS" not in extensions:
            return self._without_tls(extensions, here, tls, "STARTTLS not offered")
        protocol.send("STARTTLS")
        reply = await protocol.read_reply(self._timeouts.command, "STARTTLS")
        if reply.code != 220:
            return self._without_tls(extensions, here, tls, f"STARTTLS refused: {reply.code}")
        protocol.connection.startTLS(tls.options())
        try:
            return await self._hello(protocol, here, helo)
        except SessionClosed as error:
            needs = f" ({tls.why} requires a verified TLS session)" if tls.mode == "required" and tls.why else ""
            raise SetupFailed("4.7.5", f"{here}: TLS failed: {error}{needs}", tls=True) from error

    @staticmethod
    def _without_tls(extensions: dict[str, str], here: str, tls: HostTLS, why: str) -> dict[str, str]:
        """RFC 3207: plain text is fine unless something requires TLS of this host."""
        if tls.mode == "required":
            raise SetupFailed(tls.enhanced, f"{here}: {why} ({tls.why} requires TLS)")
        if tls.testing:
            log.warn("MTA-STS testing: {where}: {why}; {note}; delivering anyway", where=here, why=why,
                     note=tls.testing)
        return extensions

    async def _hello(self, protocol: ClientProtocol, here: str, helo: str) -> dict[str, str]:
        """EHLO, or HELO for an old server that rejects EHLO with 5xx (RFC 5321 3.2)."""
        protocol.send(f"EHLO {helo}")
        reply = await protocol.read_reply(self._timeouts.command, "EHLO")
        if reply.positive:
            return _extensions(reply)
        if reply.code >= 500:
            protocol.send(f"HELO {helo}")
            reply = await protocol.read_reply(self._timeouts.command, "HELO")
            if reply.positive:
                return {}
        raise SetupFailed("4.4.1", f"{here}: hello: {reply.code} {reply.one_line}")

    async def _authenticate(self, protocol: ClientProtocol, here: str, extensions: dict[str, str],
                            credentials: Credentials) -> None:
        """AUTH PLAIN (RFC 4616) if offered, else LOGIN; only ever called on a TLS session."""
        mechanisms = extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            secret = f"\0{credentials.username}\0{credentials.password}".encode("utf-8")
            protocol.send(f"AUTH PLAIN {base64.b64encode(secret).decode('ascii')}")
            reply = await protocol.read_reply(self._timeouts.command, "AUTH")
        elif "LOGIN" in mechanisms:
            protocol.send("AUTH LOGIN")
            reply = await protocol.read_reply(self._timeouts.command, "AUTH")
            for value in (credentials.username, credentials.password):
                if reply.code != 334:
                    break
                protocol.send(base64.b64encode(value.encode("utf-8")).decode("ascii"))
                reply = await protocol.read_reply(self._timeouts.command, "AUTH")
        else:
            raise SetupFailed("4.7.0", f"{here}: offers no AUTH PLAIN or LOGIN (relay.smarthost_username is set)")
        if reply.code == 235:
            return
        log.warn("relay: {where}: AUTH as {user} refused: {code} {text}", where=here,
                 user=credentials.username, code=reply.code, text=reply.one_line)
        if reply.code >= 400:
            raise AuthRefused(reply)
        raise SetupFailed("4.7.0", f"{here}: unexpected reply to AUTH: {reply.code}")

    async def transaction(self, protocol: ClientProtocol, job: MailJob, key: Key,
                          extensions: dict[str, str]) -> list[RecipientResult]:
        """MAIL, RCPTs, DATA (all in one write with PIPELINING), body, final reply."""
        host, timeouts = key[1], self._timeouts
        if job.smtputf8 and "SMTPUTF8" not in extensions:  # RFC 6531 3.2: no downgrade; the sender hears why
            reply = Reply(550, "5.6.7", f"{where(key)} does not support SMTPUTF8, which this message needs")
            return [result(reply, r, host) for r in job.recipients]
        size = job.wire_size if job.wire_size is not None else wire_size(job.message_path)  # 0.1's entries: read
        params = [f"SIZE={size}"] if "SIZE" in extensions else []
        params += ["BODY=8BITMIME"] if "8BITMIME" in extensions else []
        params += ["SMTPUTF8"] if job.smtputf8 else []
        dsn = job.dsn if "DSN" in extensions else DSNRequest()
        mail = " ".join([f"MAIL FROM:<{job.mail_from}>", *params, *dsn.mail])
        rcpts = [" ".join([f"RCPT TO:<{recipient}>", *dsn.rcpt.get(recipient, ())]) for recipient in job.recipients]
        if "PIPELINING" in extensions:
            protocol.send(mail, *rcpts, "DATA")  # RFC 2920: DATA may end the batch
            mail_reply = await protocol.read_reply(timeouts.mail, "MAIL")
            rcpt_replies = [await protocol.read_reply(timeouts.rcpt, "RCPT") for _ in rcpts]
            data_reply: Reply | None = await protocol.read_reply(timeouts.data_init, "DATA")
        else:
            mail_reply, rcpt_replies, data_reply = await self._lockstep(protocol, mail, rcpts)
        if not mail_reply.positive:
            await self._abandon(protocol, data_reply)
            return [result(mail_reply, r, host) for r in job.recipients]
        if not any(reply.positive for reply in rcpt_replies):
            await self._abandon(protocol, data_reply)
            return [result(reply, r, host) for r, reply in zip(job.recipients, rcpt_replies)]
        try:
            final = await self._data(protocol, job, data_reply)
        except FinalReplyLost as lost:
            return _maybe_delivered(job, rcpt_replies, key, lost)
        action = None if "DSN" in extensions else "relayed"  # RFC 3461 5.2.2: a host without DSN
        return [replace(result(final if reply.positive else reply, r, host), success_action=action)
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

    async def _data(self, protocol: ClientProtocol, job: MailJob, data_reply: Reply | None) -> Reply:
        """Send the body after 354 and return the final reply (or DATA's refusal).

        FinalReplyLost once the dot has gone: from then on the server may
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
            raise FinalReplyLost(why if why.startswith("end of data") else f"end of data: {why}") from error

    async def _abandon(self, protocol: ClientProtocol, data_reply: Reply | None) -> None:
        """Nobody to deliver to: end a DATA the server wrongly accepted, then RSET."""
        if data_reply is not None and data_reply.code == 354:
            protocol.connection.write(b".\r\n")  # RFC 2920 3.1: an empty message, rejected
            await protocol.read_reply(self._timeouts.data_end, "end of data")
        protocol.send("RSET")
        await protocol.read_reply(self._timeouts.command, "RSET")


def _maybe_delivered(job: MailJob, rcpt_replies: list[Reply], key: Key,
                     lost: FinalReplyLost) -> list[RecipientResult]:
    """The accepted recipients' reply after the dot never came: deferred, and marked
    as Postfix does ("message may be sent more than once"); refused ones keep their reply."""
    host = key[1]
    reply = Reply(451, "4.4.2", f"{where(key)}: {lost}; the message may have been delivered")
    return [RecipientResult(recipient, reply, host, maybe_delivered=True) if answer.positive
            else result(answer, recipient, host)
            for recipient, answer in zip(job.recipients, rcpt_replies)]
