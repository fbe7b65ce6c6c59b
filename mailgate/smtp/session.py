"""One ESMTP connection: input, pipelining order, timers, reply batching, shutdown.

Commands are read as lines and answered in order; a command that waits on
plugins or the disk pauses reading until its reply is written, which is
what makes PIPELINING safe. DATA and each BDAT chunk bypass line handling
altogether and go to `mailgate.smtp.data_reader.DataReader` (or its
counting ChunkReader) in bulk.

What each command does is not here: `COMMANDS` maps each verb to a handler
(mailgate.smtp.mail_command, rcpt_command, data_command, auth_command,
verify_commands, session_commands), which is given the connection's
SessionState, the session as its Channel, and the listener's policy, and
answers with a Reply (see mailgate.smtp.channel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from mailgate.core.reply import Reply
from mailgate.core.session import Session
from mailgate.hooks.calling import FAILED, HookFailed
from mailgate.net.flow import SMALL_SEND_BUFFER, FlowControl
from mailgate.net.interfaces import Connection, connection_view, socket_of
from mailgate.net.sni import host_name
from mailgate.net.tls import is_tls
from mailgate.net.write_through import write_through
from mailgate.smtp import bdat_command, data_command, refusal_log, session_commands
from mailgate.smtp.channel import Answer, Pending
from mailgate.smtp.commands import COMMANDS
from mailgate.smtp.chunk_reader import ChunkReader
from mailgate.smtp.data_reader import DataReader
from mailgate.smtp.state import SessionState

if TYPE_CHECKING:
    from mailgate.smtp.factory import SMTPFactory  # which imports this module, to build sessions

log = Logger()

MAX_COMMAND_LINE = 512  # RFC 5321 4.5.3.1.4, CRLF included
DATA_PROGRESS_BYTES = 1024  # DATA must advance this much per command_timeout
BAD_COMMAND_CODES = frozenset((500, 501, 502, 503, 504, 555))
OUTBOX_FLUSH_BYTES = 16 * 1024  # a long pipelined batch is answered in parts, so backpressure can stop it
CLOSE_GRACE_SECONDS = 30.0  # a closing connection whose client reads nothing is then aborted
MAX_UNHANDLED_INPUT = 64 * 1024  # input read but not yet handled; past it, reading pauses

UNRECOGNIZED = Reply(500, "5.5.2", "Command not recognized")
NOT_ASCII = Reply(500, "5.5.2", "Command contains non-ASCII characters")
UTF8_VERBS = frozenset(("MAIL", "RCPT", "VRFY", "EXPN"))  # those that take SMTPUTF8 addresses (RFC 6531 3.7)
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down")
TIMED_OUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")


@implementer(IHandshakeListener)
class SMTPSession(Protocol, TimeoutMixin):
    """One SMTP connection, and the Channel its command handlers answer through."""

    factory: SMTPFactory
    _connection: Connection  # the transport, typed for calls; set by makeConnection

    def __init__(self, factory: SMTPFactory) -> None:
        self.factory = factory
        self._policy = factory.policy
        self._clock: IReactorTime = factory.policy.clock
        self.state = SessionState(Session(listener=factory.policy.listener.name))
        self._buffer = b""  # input; _buffer[_offset:] is not yet handled: lines are cut by offset, never re-sliced
        self._offset = 0
        self._skipping_long_line = False
        self._busy = False  # a command's answer is awaited: read no further command
        self._closing = False
        self._reader: DataReader | None = None  # DATA: the body goes here, not to line handling
        self._closed: Deferred[None] | None = None  # shut_down's, fired when the connection is gone
        self._line_waiter: Deferred[str] | None = None  # an AUTH exchange waiting for its next line
        self._processing = False  # _process is on the stack: replies must not re-enter it
        self._outbox: list[bytes] = []  # replies to a batch of pipelined commands, sent together
        self._outbox_size = 0
        self._linger: IDelayedCall | None = None  # close()'s deadline for the last replies to leave
        self._counted = False  # by the server's Admission, until connectionLost
        self._data_deadline: IDelayedCall | None = None  # the DATA phase's own timer (limits.data_timeout)
        self._data_progress = 0  # bytes since the idle timer was last reset in DATA
        self._greeting_waits = False  # for the TLS handshake (implicit TLS with [tls.sni] pairs)
        self._admission: Deferred[Reply | None] | None = None  # the master's answer, with workers
        self._command_name, self._argument = "CONNECT", ""  # what the next reply answers, for the refusal log
        self._opened_at = 0.0  # clock seconds at connect: the session's duration, for the metrics

    # --- connection ----------------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        self._connection = connection_view(transport)
        self._flow = FlowControl(self._connection, self._caught_up)
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        factory, policy = self.factory, self._policy
        ip: str = getattr(self._connection.getPeer(), "host", "")
        self.state.session = Session(peer=ip, tls=is_tls(self._connection), listener=policy.listener.name)
        factory.sessions.add(self)
        self._flow.start(send_buffer_bytes=SMALL_SEND_BUFFER)  # replies are short: no megabytes in the kernel
        self._opened_at = self._clock.seconds()
        policy.meters.session_opened("smtp", policy.listener.name)
        set_no_delay = getattr(self._connection, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)  # replies are small; Nagle would add 40 ms each
        handle = socket_of(self._connection)
        refusal = factory.admission_refusal(ip, handle.fileno() if handle is not None else None)
        self._counted = True
        if refusal is not None and not isinstance(refusal, Deferred):
            return self.close(refusal)
        self.setTimeout(policy.config.limits.command_timeout_seconds)
        self._admission = refusal  # with workers, the master's shared Admission: its answer comes later
        if self.state.session.tls and policy.config.tls.sni:
            self._greeting_waits = True  # implicit TLS: the greeting names the SNI host, once the handshake says it
            return None
        self._greet()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: an implicit-TLS greeting held for the client's SNI name goes now."""
        if self._greeting_waits and not self._closing:
            self._greeting_waits = False
            self._greet()

    def _greet(self) -> None:
        self._give(session_commands.greeting(self.state, self, self._policy, self._admission))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        self._cancel_data_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.factory.sessions.discard(self)
        if self._counted:
            self._counted = False
            self._policy.admission.leave(self.state.session.peer)
        self._policy.meters.session_closed("smtp", self._policy.listener.name, self._clock.seconds() - self._opened_at)
        if self._closed is not None:
            self._closed.callback(None)

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's idle timer, on the injected clock."""
        return self._clock.callLater(period, func)

    def timeoutConnection(self) -> None:
        self._command_name, self._argument = "TIMEOUT", ""
        self.close(TIMED_OUT)

    def shut_down(self) -> Deferred[None]:
        """End this session for a server stop; waits for a delivery in flight."""
        if self._closed is None:
            self._closed = Deferred()
        if not self._busy:
            self.close(SHUTTING_DOWN)
        # else: the reply of the delivery in flight is sent first (see _resume)
        return self._closed

    # --- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        reader = self._reader
        if reader is not None:
            self._note_data_progress(len(data))
            if len(self._buffer) == self._offset:
                rest = reader.feed(data)
                if rest is not None:
                    self._end_data(reader, rest)
                    self._process()  # after a BDAT chunk answered at once: the commands that came with it
                return
        self._buffer = self._buffer[self._offset:] + data if self._offset else self._buffer + data
        self._offset = 0
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
            if self._offset:  # one copy per batch, of what is left
                self._buffer, self._offset = self._buffer[self._offset :], 0
            # Input not handled yet (a command waits: the AUTH failure delay, a delivery; or the
            # client is behind on its replies) is kept up to the bound; the rest waits in the kernel.
            self._flow.hold_input(len(self._buffer) > MAX_UNHANDLED_INPUT)
            self._flush()

    def _take_input(self) -> bytes:
        """All the input not yet handled, which leaves the buffer."""
        data = self._buffer[self._offset :] if self._offset else self._buffer
        self._buffer, self._offset = b"", 0
        return data

    def _caught_up(self) -> None:
        """The client has read its replies (FlowControl): answer what it sent meanwhile."""
        if len(self._buffer) > self._offset and not self._processing:
            self._process()

    def _process_lines(self) -> None:
        flow = self._flow
        while not self._closing and (not self._busy or self._line_waiter is not None) and not flow.replies_blocked:
            reader = self._reader
            if reader is not None:
                data = self._take_input()
                rest = reader.feed(data) if data else None
                if rest is None:
                    return
                self._end_data(reader, rest)
                continue
            buffer, start = self._buffer, self._offset  # handlers may replace both (STARTTLS, DATA)
            newline = buffer.find(b"\n", start)
            if newline < 0:
                if len(buffer) - start > MAX_COMMAND_LINE:
                    self._buffer, self._offset = b"", 0
                    self._skipping_long_line = True
                return
            line = buffer[start:newline].rstrip(b"\r")
            self._offset = newline + 1
            self.resetTimeout()  # per whole line: a trickled line counts as idle
            if self._skipping_long_line or len(line) + 2 > MAX_COMMAND_LINE:
                self._skipping_long_line = False
                self._command_name, self._argument = "LONG-LINE", ""
                self._answer(LINE_TOO_LONG)
                continue
            if self._line_waiter is not None:
                waiter, self._line_waiter = self._line_waiter, None
                waiter.callback(line.decode("ascii", "replace"))
                continue
            self._command(line)

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")  # UTF-8 paths are SMTPUTF8's (RFC 6531 3.3); the handlers check
        except UnicodeDecodeError:
            self._command_name, self._argument = "NON-ASCII", ""
            return self._answer(NOT_ASCII)
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        self._command_name, self._argument = verb[:16], argument
        if not text.isascii() and verb not in UTF8_VERBS:
            return self._answer(NOT_ASCII)
        handler = COMMANDS.get(verb)
        if handler is None:
            return self._answer(UNRECOGNIZED)
        self._give(handler(argument.strip(), self.state, self, self._policy))

    def _give(self, answer: Answer) -> None:
        """Send a handler's answer, or wait for it."""
        if isinstance(answer, Reply):
            self._answer(answer)
        elif answer is not None:
            self._wait_for(answer)

    def _wait_for(self, work: Pending) -> None:
        """Pause command processing until `work` gives its reply.

        The idle timer stops meanwhile: a slow disk must not make the server
        time out its own client and then store a message it answered 421 to.
        """
        self._busy = True
        self.setTimeout(None)
        d = Deferred.fromCoroutine(work)
        d.addErrback(self._internal_error)
        d.addCallback(self._resume)

    def _internal_error(self, failure: Failure) -> Reply:
        if failure.check(HookFailed):  # a plugin's failure, already logged naming it: fail closed
            return FAILED
        log.failure("SMTP session error from {ip}", failure, ip=self.state.session.peer)
        return INTERNAL_ERROR

    def _resume(self, reply: Reply | None) -> None:
        self._busy = False
        if not self._closing:
            self.setTimeout(self._policy.config.limits.command_timeout_seconds)
        if reply is not None:
            self._answer(reply)
        if self._closed is not None and not self._closing:
            return self.close(SHUTTING_DOWN)
        if len(self._buffer) > self._offset:
            self._process()

    # --- DATA ----------------------------------------------------------------

    def _note_data_progress(self, size: int) -> None:
        """In DATA the idle timer restarts only per KiB received: a client
        trickling a byte at a time cannot keep the session alive."""
        self._data_progress += size
        if self._data_progress >= DATA_PROGRESS_BYTES:
            self._data_progress = 0
            self.resetTimeout()

    def _cancel_data_deadline(self) -> None:
        if self._data_deadline is not None and self._data_deadline.active():
            self._data_deadline.cancel()
        self._data_deadline = None

    def _end_data(self, reader: DataReader, rest: bytes) -> None:
        """The end of the data: what follows it is commands again, once the message is answered."""
        self._cancel_data_deadline()
        self._reader = None
        self._buffer = rest + self._take_input()
        if isinstance(reader, ChunkReader):
            return self._give(bdat_command.chunk_done(reader, self.state, self._policy))
        envelope, self.state.envelope = self.state.envelope, None
        self._command_name, self._argument = "DATA", ""
        assert envelope is not None  # DATA was accepted for it, and no command ran since
        self._wait_for(data_command.finish_message(reader, envelope, self.state.esmtp, self._policy))

    # --- replies -------------------------------------------------------------

    def _answer(self, reply: Reply) -> None:
        """Queue a reply; it leaves at once unless a batch of commands is being answered."""
        if reply.code >= 400:
            refusal_log.tell(self._command_name, self._argument, self.state, reply)
        if reply.code in BAD_COMMAND_CODES and not self._closing:
            state = self.state
            state.bad_commands += 1  # Postfix's smtpd_hard_error_limit: a probe or a bot
            if state.bad_commands > self._policy.config.limits.max_bad_commands:
                return self.close(TOO_MANY_ERRORS)
        wire = reply.wire()
        self._outbox.append(wire)
        self._outbox_size += len(wire)
        if not self._processing or self._outbox_size > OUTBOX_FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Send the queued replies in one write, straight to the socket when it can take them."""
        if self._outbox:
            data = b"".join(self._outbox)
            self._outbox.clear()
            self._outbox_size = 0
            write_through(self._connection, data)
            if not self._flow.wrote(len(data)):
                self._closing = True  # aborted: the client has not read a MiB of replies

    # --- the Channel, for command handlers (mailgate.smtp.channel) ------------

    def send(self, reply: Reply) -> None:
        self._answer(reply)

    def read_line(self) -> Deferred[str]:
        """The client's next line; the idle timer runs while we wait for it."""
        self.setTimeout(self._policy.config.limits.command_timeout_seconds)
        waiter: Deferred[str] = Deferred()
        self._line_waiter = waiter
        return waiter

    def close(self, reply: Reply) -> None:
        self._closing = True
        self._reader = None
        self._answer(reply)
        self._flush()
        self._flow.stop()  # a registered producer would keep the connection open
        self._connection.loseConnection()
        if self._linger is None:  # loseConnection waits for the replies to leave; not forever
            self._linger = self._clock.callLater(CLOSE_GRACE_SECONDS, self._connection.abortConnection)

    def start_tls(self, ready: Reply) -> None:
        self._buffer, self._offset = b"", 0  # RFC 3207 4.2: nothing pipelined before the handshake counts
        self._answer(ready)
        self._flush()  # in the clear, before the handshake
        self._connection.startTLS(self._policy.tls_options)

    def server_name(self) -> str:
        return host_name(self._connection, self._policy.config.tls.sni, self._policy.config.server.hostname)

    def receive_data(self, reader: DataReader) -> None:
        self._reader = reader
        self._data_progress = 0
        self._data_deadline = self._clock.callLater(
            self._policy.config.limits.data_timeout_seconds, self.timeoutConnection
        )
