"""The POP3 listener over the Maildir store: one session per connection, RFC 1939 with pipelining.

A session owns the connection: the input queue and its order, the idle
timer, replies, CAPA (RFC 2449) and shutdown. The commands of each state
are handler objects it delegates to: `mailgate.pop3.auth_commands`
(AUTHORIZATION: USER/PASS, SASL PLAIN, STLS) and
`mailgate.pop3.transaction_commands` (TRANSACTION, then UPDATE at QUIT).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import IO, cast

from twisted.cred.portal import Portal
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IAddress, IDelayedCall, IOpenSSLContextFactory, IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgate.accounts.cred import (
    BlockingRunner,
    PasswordStore,
    portal_over,
    thread_runner,
)
from mailgate.config import LimitsConfig
from mailgate.core.meters import NO_METERS, Meters
from mailgate.limits.admission import Admission, Refusal
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.net.interfaces import Connection, connection_view, socket_of
from mailgate.net.tls import is_tls
from mailgate.net.write_through import write_through
from mailgate.pop3.auth_commands import Authorization
from mailgate.pop3.channel import StateHandler, Wait
from mailgate.pop3.maildrop import SYS_TEMP, Mailboxes, Maildrop
from mailgate.pop3.streaming import MessageSender
from mailgate.pop3.transaction_commands import Transaction

log = Logger()

REFUSALS = {
    Refusal.PER_IP: b"-ERR [SYS/TEMP] Too many connections from your address.",
    Refusal.RATE: b"-ERR [SYS/TEMP] Too many connections from your address, slow down.",
    Refusal.FULL: b"-ERR [SYS/TEMP] Too many connections, try again later.",
}


class POP3Factory(protocol.ServerFactory):
    """Builds POP3Session protocols and holds what sessions share: portal, throttle, mailboxes."""

    def __init__(
        self,
        *,
        accounts: PasswordStore | None,
        maildir_root: str,
        hostname: str,
        tls_options: IOpenSSLContextFactory | None,  # for STLS (tls.server_tls_options); None: no STLS
        plaintext_auth: str,  # "tls" | "always" (security.plaintext_auth)
        reactor: IReactorTime,  # also IReactorThreads unless run_blocking is given
        idle_timeout_seconds: float = 600.0,
        throttle: AuthThrottle | None = None,
        portal: Portal | None = None,
        run_blocking: BlockingRunner | None = None,
        admission: Admission | None = None,  # the server's, shared with every listener
        meters: Meters = NO_METERS,
        listener: str = "pop3",
    ) -> None:
        self.hostname = hostname
        self.meters, self.listener = meters, listener  # sessions and login failures, for mailgate.ops.metrics
        self.tls_options = tls_options
        self.plaintext_auth = plaintext_auth
        self.reactor = reactor
        self.idle_timeout_seconds = idle_timeout_seconds
        # Without run_blocking the reactor is also IReactorThreads (a real reactor is).
        self.run_blocking = run_blocking or thread_runner(cast(IReactorThreads, reactor))
        self.throttle = throttle or AuthThrottle(reactor)
        self.admission = admission if admission is not None else Admission(LimitsConfig(), reactor)
        if portal is None:
            if accounts is None:
                raise ValueError("POP3Factory needs accounts or a portal")
            portal = portal_over(accounts, self.run_blocking)
        self.portal = portal
        self.mailboxes = Mailboxes(maildir_root, self.run_blocking)
        self.sessions: set[POP3Session] = set()

    def shut_down(self) -> Deferred[list[tuple[bool, None]]]:
        """Tell every session the server stops (after a message or commit in flight); wait for them."""
        return DeferredList([session.shut_down() for session in list(self.sessions)], consumeErrors=True)

    def buildProtocol(self, addr: IAddress | None) -> POP3Session:
        return POP3Session(self)


class POP3Session(protocol.Protocol):
    """One POP3 connection: a command queue so pipelined commands run in order.

    A command that waits (password check, listing, streaming, commit)
    returns a coroutine; while it runs the session is busy and lines that
    arrive queue up, to run when it ends.
    """

    MAX_LINE = 8192  # SASL responses may exceed RFC 2449's 255 octets
    MAX_PENDING = 256
    MAX_BAD_COMMANDS = 10

    def __init__(self, factory: POP3Factory) -> None:
        self.factory = factory
        self._clock: IReactorTime = factory.reactor
        self._connection: Connection | None = None
        self._state: StateHandler = Authorization(
            self,
            portal=factory.portal,
            throttle=factory.throttle,
            mailboxes=factory.mailboxes,
            plaintext_auth=factory.plaintext_auth,
            meters=factory.meters,
        )
        self._buffer = b""
        self._pending: deque[bytes] = deque()
        self._busy = self._draining = self._paused = False
        self._connected = self._closing = self._secure = False
        self._line_waiter: Deferred[bytes] | None = None
        self._idle_call: IDelayedCall | None = None
        self._pause: Deferred[None] | None = None
        self._sender: MessageSender | None = None
        self._bad_commands = 0
        self._ip = "unknown"
        self._closed: Deferred[None] | None = None  # fires when the connection is gone, once shut_down asked
        self._counted = False  # by the factory's Admission, until connectionLost
        self._opened_at = 0.0

    # connection life cycle

    def connectionMade(self) -> None:
        assert self.transport is not None
        connection = connection_view(self.transport)
        self._connection = connection
        self._connected = True
        self.factory.sessions.add(self)
        self._opened_at = self._clock.seconds()
        self.factory.meters.session_opened("pop3", self.factory.listener)
        self._secure = is_tls(connection)
        self._ip = str(getattr(connection.getPeer(), "host", "unknown"))
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)  # Nagle + small replies = 40 ms per command
            except (OSError, AttributeError, NotImplementedError):
                pass
        handle = socket_of(connection)
        refusal = self.factory.admission.enter(self._ip, handle.fileno() if handle is not None else None)
        self._counted = True
        if isinstance(refusal, Deferred):  # counts shared with other processes (mailgate.limits.state)
            refusal.addCallback(self._greet)
            return
        self._greet(refusal)

    def _greet(self, refusal: Refusal | None) -> None:
        if not self._connected:
            return
        if refusal is not None:
            log.info("POP3 connection from {ip} refused: {why}", ip=self._ip, why=refusal.value)
            self.reply(REFUSALS[refusal])
            self.close()
            return
        self._reset_idle()
        self.reply(b"+OK " + self.factory.hostname.encode("ascii", "replace") + b" POP3 ready.")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._connected = False
        self.factory.sessions.discard(self)
        if self._counted:
            self._counted = False
            self.factory.admission.leave(self._ip)
        self.factory.meters.session_closed("pop3", self.factory.listener, self._clock.seconds() - self._opened_at)
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        for waiting in (self._pause, self._line_waiter):
            if waiting is not None:
                waiting.cancel()  # the command ends quietly: see _run
        if self._sender is not None:
            self._sender.stopProducing()
        self._state.connection_lost()
        if self._closed is not None:
            self._closed.callback(None)

    def shut_down(self) -> Deferred[None]:
        """End the session for a server stop, as Dovecot does; nothing marked is deleted.

        A message being sent or a QUIT being committed finishes first.
        """
        if self._closed is None:
            self._closed = Deferred()
            if not self._busy or self._line_waiter is not None:  # a SASL exchange need not finish
                self._say_shutting_down()
        return self._closed

    def _say_shutting_down(self) -> None:
        self.reply(b"-ERR [SYS/TEMP] Server shutting down.")
        self.close()

    def _reset_idle(self) -> None:
        timeout = self.factory.idle_timeout_seconds
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(timeout)
        elif self._connected:
            self._idle_call = self._clock.callLater(timeout, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self._sender is not None:
            # Mid-message a "-ERR" would read as message text; stopping the
            # producer closes the connection (a producer would keep it open).
            self._sender.stopProducing()
            return
        self.reply(b"-ERR Disconnected for inactivity.")
        self.close()

    # the Channel the state handlers see (mailgate.pop3.channel)

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def secure(self) -> bool:
        return self._secure

    @property
    def peer_ip(self) -> str:
        return self._ip

    @property
    def tls_possible(self) -> bool:
        return self.factory.tls_options is not None and not self._secure and self._tls_starter() is not None

    def reply(self, line: bytes) -> None:
        if self._connected:
            write_through(self.transport, line + b"\r\n")

    def write(self, data: bytes) -> None:
        if self._connection is not None and self._connected:
            self._connection.write(data)

    def close(self) -> None:
        self._pending.clear()
        self._closing = True
        if self._connection is not None and self._connected:
            self._connection.loseConnection()

    def pause(self, seconds: float) -> Deferred[None]:
        self._pause = deferLater(self.factory.reactor, seconds)
        return self._pause

    def read_line(self) -> Deferred[bytes]:
        self._line_waiter = Deferred()
        return self._line_waiter

    def start_tls(self) -> None:
        # RFC 2595 section 4: forget everything from before TLS, including
        # commands a man in the middle may have pipelined after STLS.
        self._pending.clear()
        self._buffer = b""
        start = self._tls_starter()
        if start is not None:
            start(self.factory.tls_options)
            self._secure = True

    def _tls_starter(self) -> Callable[[object], None] | None:
        """The transport's startTLS (ITLSTransport), which a test transport may lack."""
        start: Callable[[object], None] | None = getattr(self.transport, "startTLS", None)
        return start

    def send_message(self, handle: IO[bytes], top_lines: int | None, first_line: bytes) -> Deferred[None]:
        assert self._connection is not None  # connectionMade came first
        self._sender = MessageSender(handle, top_lines, self._reset_idle)
        done = self._sender.begin(self._connection, first_line)
        done.addBoth(self._sent)
        return done

    def _sent(self, result: object) -> object:
        self._sender = None
        return result

    def enter_transaction(self, maildrop: Maildrop) -> None:
        self._state = Transaction(self, maildrop)

    # input

    def dataReceived(self, data: bytes) -> None:
        self._reset_idle()
        self._buffer += data
        if b"\n" in data:
            *lines, self._buffer = self._buffer.split(b"\n")
            self._pending.extend(lines)
            if max(map(len, lines)) > self.MAX_LINE:
                self._too_long()
                return
        if len(self._buffer) > self.MAX_LINE:
            self._too_long()
            return
        self._drain()
        if len(self._pending) > self.MAX_PENDING and not self._paused and self._connection is not None:
            self._paused = True  # a client pipelining without reading: stop reading too
            self._connection.pauseProducing()

    def _too_long(self) -> None:
        self.reply(b"-ERR Line too long.")
        self.close()

    def _drain(self) -> None:
        if self._draining:
            return  # a command finished synchronously inside the loop below
        self._draining = True
        try:
            while self._pending and self._ready():
                self._handle_line(self._pending.popleft().rstrip(b"\r"))
        finally:
            self._draining = False
        if self._paused and len(self._pending) < self.MAX_PENDING // 2 and self._connection is not None:
            self._paused = False
            self._connection.resumeProducing()

    def _ready(self) -> bool:
        """Whether the next line may be handled now: by a waiting command, or as the next command."""
        if not self._connected or self._closing or self._connection is None or self._connection.disconnecting:
            return False
        return not self._busy or self._line_waiter is not None

    def _handle_line(self, line: bytes) -> None:
        if self._line_waiter is not None:
            waiter, self._line_waiter = self._line_waiter, None
            waiter.callback(line)
            return
        command, _, arg = line.partition(b" ")
        name = command.upper().decode("ascii", "replace")
        handler = self._commands().get(name)
        if handler is None:
            self._bad_command(b"-ERR Unknown command.")
            return
        try:
            waiting = handler(arg)
        except Exception:
            log.failure("POP3 command {command} failed", command=name)
            self.reply(SYS_TEMP)
            return
        if waiting is not None:
            self._busy = True
            Deferred.fromCoroutine(self._run(name, waiting))

    def _commands(self) -> dict[str, Callable[[bytes], Wait | None]]:
        return {"CAPA": self.do_CAPA, **self._state.commands()}

    async def _run(self, name: str, command: Wait) -> None:
        """Wait for a command to end, then let the next one start."""
        try:
            await command
        except CancelledError:
            if self._connected:
                raise  # not cancelled by connectionLost: a bug, logged by the Deferred
        except Exception:
            log.failure("POP3 command {command} failed", command=name)
            self.reply(SYS_TEMP)
        finally:
            self._pause = None
        self._busy = False
        if not self._connected or self._closing:
            return
        if self._closed is not None:
            self._say_shutting_down()  # shut_down waited for this command
            return
        self._drain()

    def _bad_command(self, reply: bytes) -> None:
        self._bad_commands += 1
        if self._bad_commands > self.MAX_BAD_COMMANDS:
            self.reply(b"-ERR Too many invalid commands.")
            self.close()
            return
        self.reply(reply)

    def do_CAPA(self, arg: bytes) -> None:
        lines = [b"+OK", b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE"]
        lines += self._state.capabilities()
        lines += [b"IMPLEMENTATION mailgate", b"."]
        self.write(b"\r\n".join(lines) + b"\r\n")
