"""The ESMTP listener: one session per connection, RFC 5321 with pipelining.

Commands are read as lines and answered in order; a command that waits on
plugins or the disk pauses reading until its reply is written, which is
what makes PIPELINING safe. DATA bypasses line handling altogether and
goes to `mailgate.smtp.data_reader.DataReader` in bulk.

The session owns the command loop; MAIL (`mailgate.smtp.mail_command`), AUTH
(`mailgate.smtp.auth_command`), DATA (`mailgate.smtp.data_command`) and VRFY/EXPN
(`mailgate.smtp.verify_commands`) are mixed in.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Awaitable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from mailgate.core.addresses import AddressError, normalize_mailbox, parse_command_path
from mailgate.config import GatewayConfig, ListenConfig
from mailgate.inbound.transaction import Deliverer
from mailgate.core.session import Envelope
from mailgate.limits.rate import RateLimiter
from mailgate.core.reply import Reply
from mailgate.inbound.routing import accept_recipient
from mailgate.smtp.auth_command import SMTPAuthCommand
from mailgate.smtp.data_reader import DataReader
from mailgate.smtp.data_command import SMTPDataCommand
from mailgate.smtp.mail_command import SMTPMailCommand, owned_senders
from mailgate.smtp.verify_commands import SMTPVerifyCommands
from mailgate.net.tls import is_tls
from mailgate.net.write_through import write_through

log = Logger()

MAX_COMMAND_LINE = 512  # RFC 5321 4.5.3.1.4, CRLF included


class SMTPFactory(Factory):
    """Builds sessions for one `[[listen]]` table and tracks them for shutdown."""

    noisy = False

    def __init__(
        self,
        config: GatewayConfig,
        listener: ListenConfig,
        hooks: Any,
        deliverer: Deliverer,
        clock: IReactorTime,
        tls_options: Any = None,
        portal: Any = None,
        throttle: Any = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self.hooks = hooks
        self.deliverer = deliverer
        self.clock = clock
        self.tls_options = tls_options if listener.tls == "starttls" else None
        self.portal = portal  # twisted.cred Portal over the users file; None: no AUTH
        self.throttle = throttle  # mailgate.accounts.cred.AuthThrottle, shared by all listeners
        self.owned_senders = owned_senders(config)
        self.sessions: set[SMTPSession] = set()
        self.per_ip: Counter[str] = Counter()
        self.sender_rate = RateLimiter(config.limits.sender_rate, clock)
        self.connection_rate = RateLimiter(config.limits.connection_rate, clock)
        self.stopping = False

    def buildProtocol(self, addr: Any) -> SMTPSession:
        session = SMTPSession()
        session.factory = self
        return session

    def shut_down(self) -> Deferred:
        """Say 421 to every session (after its delivery in flight) and wait for them to end."""
        self.stopping = True
        closing = [session.shut_down() for session in list(self.sessions)]
        return DeferredList(closing, consumeErrors=True)


class SMTPSession(SMTPMailCommand, SMTPAuthCommand, SMTPDataCommand, SMTPVerifyCommands,
                  Protocol, TimeoutMixin):
    """One SMTP connection."""

    factory: SMTPFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._skipping_long_line = False
        self._busy = False
        self._closing = False
        self._reader: DataReader | None = None
        self._helo = ""
        self._esmtp = False
        self._envelope: Envelope | None = None
        self._client_ip = ""
        self._authenticated_as: str | None = None
        self._closed: Deferred | None = None
        self._line_waiter: Deferred | None = None  # an AUTH exchange waiting for its next line
        self._processing = False  # _process is on the stack: replies must not re-enter it
        self._outbox: list[bytes] = []  # replies to a batch of pipelined commands, sent together
        self._bad_commands = 0
        self._data_deadline: Any = None  # the DATA phase's own timer (limits.data_timeout)
        self._data_progress = 0  # bytes since the idle timer was last reset in DATA

    # --- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.callLater = factory.clock.callLater  # TimeoutMixin's timer, on the injected clock
        peer = self.transport.getPeer()
        self._client_ip = getattr(peer, "host", "")
        factory.sessions.add(self)
        factory.per_ip[self._client_ip] += 1
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)  # replies are small; Nagle would add 40 ms each
        if factory.per_ip[self._client_ip] > factory.config.limits.max_connections_per_ip:
            return self._close(421, "4.7.0 Too many connections from your address")
        if factory.connection_rate.take(self._client_ip):
            return self._close(421, "4.7.0 Too many connections from your address, slow down")
        if factory.stopping:
            return self._close(421, "4.3.2 Service shutting down")
        self.setTimeout(factory.config.limits.command_timeout_seconds)
        self._send(220, f"{factory.config.server.hostname} ESMTP mailgate")

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        self._cancel_data_deadline()
        factory = self.factory
        factory.sessions.discard(self)
        factory.per_ip[self._client_ip] -= 1
        if factory.per_ip[self._client_ip] <= 0:
            del factory.per_ip[self._client_ip]
        if self._closed is not None:
            self._closed.callback(None)

    def timeoutConnection(self) -> None:
        self._close(421, "4.4.2 Timeout exceeded, closing connection")

    def shut_down(self) -> Deferred:
        """End this session for a server stop; waits for a delivery in flight."""
        if self._closed is None:
            self._closed = Deferred()
        if not self._busy:
            self._close(421, "4.3.2 Service shutting down")
        # else: the reply of the delivery in flight is sent first (see _resume)
        return self._closed

    def _close(self, code: int, text: str) -> None:
        self._closing = True
        self._reader = None
        self._send(code, text)
        self._flush()
        self.transport.loseConnection()

    # --- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._reader is not None:
            self._note_data_progress(len(data))
        if self._reader is not None and not self._buffer:
            rest = self._reader.feed(data)
            if rest is not None:
                self._end_data(rest)
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        """Answer every complete command line in the buffer, in order.

        A command whose answer is ready at once comes back through _resume
        while this loop is still running; the loop, not a recursive call,
        then goes on, so a thousand pipelined commands need no deep stack.
        """
        if self._processing:
            return
        self._processing = True
        try:
            self._process_lines()
        finally:
            self._processing = False
            self._flush()

    def _process_lines(self) -> None:
        while not self._closing and (not self._busy or self._line_waiter is not None):
            if self._reader is not None:
                data, self._buffer = self._buffer, b""
                rest = self._reader.feed(data) if data else None
                if rest is None:
                    return
                self._end_data(rest)
                continue
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_COMMAND_LINE:
                    self._buffer = b""
                    self._skipping_long_line = True
                return
            line, self._buffer = self._buffer[:newline].rstrip(b"\r"), self._buffer[newline + 1 :]
            self.resetTimeout()  # per whole line: a trickled line counts as idle
            if self._skipping_long_line or len(line) + 2 > MAX_COMMAND_LINE:
                self._skipping_long_line = False
                self._send(500, "5.5.2 Line too long")
                continue
            if self._line_waiter is not None:
                waiter, self._line_waiter = self._line_waiter, None
                waiter.callback(line.decode("ascii", "replace"))
                continue
            self._command(line)

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return self._send(500, "5.5.2 Command contains non-ASCII characters")
        verb, _, argument = text.partition(" ")
        handler = getattr(self, f"smtp_{verb.upper()}", None) if verb.isalpha() else None
        if handler is None:
            return self._send(500, "5.5.2 Command not recognized")
        result = handler(argument.strip())
        if result is not None:
            self._wait_for(result)

    def _wait_for(self, work: Awaitable[Reply | None]) -> None:
        """Pause command processing until `work` gives its reply.

        The idle timer stops meanwhile: a slow disk must not make the server
        time out its own client and then store a message it answered 421 to.
        """
        self._busy = True
        self.setTimeout(None)
        d = Deferred.fromCoroutine(work) if not isinstance(work, Deferred) else work
        d.addErrback(self._internal_error)
        d.addCallback(self._resume)

    def _internal_error(self, failure: Any) -> Reply:
        log.failure("SMTP session error from {ip}", failure, ip=self._client_ip)
        return Reply(451, "4.3.0", "Internal error, try again later")

    def _resume(self, reply: Reply | None) -> None:
        self._busy = False
        if not self._closing:
            self.setTimeout(self.factory.config.limits.command_timeout_seconds)
        if reply is not None:
            self._answer(reply)
        if self._closed is not None and not self._closing:
            return self._close(421, "4.3.2 Service shutting down")
        if self._buffer:
            self._process()

    @staticmethod
    def _reply(code: int, text: str) -> Reply:
        """A reply from "X.Y.Z text" (or plain text for replies without an enhanced code)."""
        return Reply.parse(f"{code} {text}")

    def _send(self, code: int, text: str) -> None:
        self._answer(self._reply(code, text))

    def _answer(self, reply: Reply) -> None:
        """Queue a reply; it leaves at once unless a batch of commands is being answered."""
        if reply.code in (500, 501, 502, 503, 504, 555) and not self._closing:
            self._bad_commands += 1  # Postfix's smtpd_hard_error_limit: a probe or a bot
            if self._bad_commands > self.factory.config.limits.max_bad_commands:
                return self._close(421, "4.7.0 Too many errors, closing connection")
        self._outbox.append(reply.wire())
        if not self._processing:
            self._flush()

    def _flush(self) -> None:
        """Send the queued replies in one write, straight to the socket when it can take them."""
        if self._outbox:
            data = b"".join(self._outbox)
            self._outbox.clear()
            write_through(self.transport, data)

    # --- commands ------------------------------------------------------------

    def smtp_HELO(self, argument: str) -> None:
        if not _printable(argument):
            return self._send(501, "5.5.4 Syntax: HELO hostname")
        self._greet(argument, esmtp=False)
        self._send(250, self.factory.config.server.hostname)

    def smtp_EHLO(self, argument: str) -> None:
        if not _printable(argument):
            return self._send(501, "5.5.4 Syntax: EHLO hostname")
        self._greet(argument, esmtp=True)
        self._send(250, "\n".join([self.factory.config.server.hostname, *self._extensions()]))

    def _greet(self, helo: str, esmtp: bool) -> None:
        self._helo, self._esmtp, self._envelope = helo, esmtp, None  # RFC 5321 4.1.4: resets

    def _extensions(self) -> list[str]:
        extensions = [
            "PIPELINING",
            f"SIZE {self.factory.config.limits.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
        ]
        if self._can_starttls():
            extensions.append("STARTTLS")
        if self._auth_offered() and self._authenticated_as is None:
            extensions.append("AUTH PLAIN LOGIN")
        return [*extensions, "HELP"]

    def _can_starttls(self) -> bool:
        return self.factory.tls_options is not None and not self._secure()

    def _secure(self) -> bool:
        return is_tls(self.transport)

    def smtp_STARTTLS(self, argument: str) -> None:
        if argument:
            return self._send(501, "5.5.4 Syntax: STARTTLS")
        if not self._can_starttls():
            return self._send(502, "5.5.1 STARTTLS not available")
        self._buffer = b""  # RFC 3207 4.2: nothing pipelined before the handshake counts
        self._send(220, "2.0.0 Ready to start TLS")
        self._flush()  # in the clear, before the handshake
        self.transport.startTLS(self.factory.tls_options)
        self._helo, self._esmtp, self._envelope = "", False, None
        self._authenticated_as = None

    def smtp_RCPT(self, argument: str) -> Awaitable[Reply] | None:
        if self._envelope is None:
            return self._send(503, "5.5.1 Need MAIL command")
        if len(self._envelope.rcpt_to) >= self.factory.config.limits.max_recipients:
            return self._send(452, "4.5.3 Too many recipients")
        try:
            path, params = parse_command_path(argument, "TO")
            if params:
                return self._send(555, f"5.5.4 Unsupported parameter {next(iter(params))}")
            recipient = self._postmaster(path) or normalize_mailbox(path)
        except AddressError as exc:
            return self._send(501, f"5.1.3 {exc}")
        return self._route(recipient, self._envelope)

    def _postmaster(self, path: str) -> str | None:
        """RFC 5321 4.5.1: a bare <postmaster> must be accepted."""
        if path.lower() == "postmaster" and self.factory.config.domains.local:
            return f"postmaster@{self.factory.config.domains.local[0]}"
        return None

    async def _route(self, recipient: str, envelope: Envelope) -> Reply:
        return await accept_recipient(self.factory.hooks, envelope, recipient)

    def smtp_RSET(self, argument: str) -> None:
        self._envelope = None
        self._send(250, "2.0.0 Ok")

    def smtp_NOOP(self, argument: str) -> None:
        self._send(250, "2.0.0 Ok")

    def smtp_QUIT(self, argument: str) -> None:
        self._close(221, "2.0.0 Bye")

    def smtp_HELP(self, argument: str) -> None:
        self._send(214, "2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY")


def _printable(text: str) -> bool:
    """Non-empty printable ASCII: a HELO name is copied into Received: headers."""
    return bool(text) and all(" " <= char <= "~" for char in text)
