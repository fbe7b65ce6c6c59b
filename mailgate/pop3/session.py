"""The POP3 listener over the Maildir store: one session per connection, RFC 1939 with pipelining.

A session owns its command queue, CAPA (RFC 2449), the maildrop lock and
UPDATE; the commands of the other two states are mixed in from
`mailgate.pop3.auth_commands` (AUTHORIZATION: USER/PASS, SASL PLAIN, STLS) and
`mailgate.pop3.transaction_commands` (TRANSACTION).
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from typing import Any, Callable

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgate.accounts.cred import (
    AccountsChecker,
    AddressRealm,
    AuthThrottle,
    PasswordStore,
    thread_runner,
)
from mailgate.store.maildir_reader import MessageInfo, commit, list_messages
from mailgate.store.maildir_writer import mailbox_path
from mailgate.pop3.auth_commands import POP3AuthCommands
from mailgate.pop3.streaming import MessageSender
from mailgate.pop3.transaction_commands import POP3TransactionCommands
from mailgate.net.tls import is_tls
from mailgate.net.write_through import write_through

log = Logger()

AUTHORIZATION, TRANSACTION, UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"

SYS_TEMP = b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more information."


class MailboxLocks(set):  # type: ignore[type-arg]
    """Addresses with a POP3 session past login, for one store (a set that can be weakly referenced)."""


_LOCKS_BY_STORE: weakref.WeakValueDictionary[str, MailboxLocks] = weakref.WeakValueDictionary()


def shared_locks(maildir_root: str) -> MailboxLocks:
    """The lock table of one Maildir store, shared by every POP3 listener over it.

    A gateway has a factory per listener (STLS and implicit TLS); a lock per
    factory would let one session on each delete under the other's feet.
    """
    key = os.path.realpath(maildir_root)
    locks = _LOCKS_BY_STORE.get(key)
    if locks is None:
        locks = _LOCKS_BY_STORE[key] = MailboxLocks()
    return locks


class POP3Factory(ServerFactory):
    """Builds POP3Session protocols and holds what sessions share: portal, throttle, locks."""

    def __init__(
        self,
        *,
        accounts: PasswordStore | None,
        maildir_root: str,
        hostname: str,
        tls_options: Any,  # a context factory for STLS (tls.server_tls_options); None: no STLS
        plaintext_auth: str,  # "tls" | "always" (security.plaintext_auth)
        reactor: Any,  # IReactorTime; also IReactorThreads unless run_blocking is given
        idle_timeout_seconds: float = 600.0,
        throttle: AuthThrottle | None = None,
        portal: Portal | None = None,
        run_blocking: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self.maildir_root = maildir_root
        self.hostname = hostname
        self.tls_options = tls_options
        self.plaintext_auth = plaintext_auth
        self.clock = reactor
        self.idle_timeout_seconds = idle_timeout_seconds
        self.run_blocking = run_blocking or thread_runner(reactor)
        self.throttle = throttle or AuthThrottle(reactor)
        if portal is None:
            if accounts is None:
                raise ValueError("POP3Factory needs accounts or a portal")
            portal = Portal(AddressRealm(), [AccountsChecker(accounts, self.run_blocking)])
        self.portal = portal
        self._locked = shared_locks(maildir_root)
        self.sessions: set[POP3Session] = set()

    def shut_down(self) -> Deferred:
        """Tell every session the server stops (after a message or commit in flight); wait for them."""
        return DeferredList([session.shut_down() for session in list(self.sessions)], consumeErrors=True)

    def buildProtocol(self, addr: Any) -> POP3Session:
        session = POP3Session()
        session.factory = self
        return session

    def lock(self, address: str) -> bool:
        """One session per mailbox (RFC 1939 section 8): deletions must not race."""
        if address in self._locked:
            return False
        self._locked.add(address)
        return True

    def unlock(self, address: str) -> None:
        self._locked.discard(address)


class POP3Session(POP3AuthCommands, POP3TransactionCommands, Protocol):
    """One POP3 connection: a command queue so pipelined commands run in order.

    Commands that wait (password check, listing, streaming, commit) set
    `_busy`; lines arriving meanwhile queue up and run when it clears.
    """

    factory: POP3Factory
    MAX_LINE = 8192  # SASL responses may exceed RFC 2449's 255 octets
    MAX_PENDING = 256
    MAX_BAD_COMMANDS = 10

    def __init__(self) -> None:
        self.state = AUTHORIZATION
        self._buffer = b""
        self._pending: deque[bytes] = deque()
        self._busy = self._draining = self._paused = False
        self._connected = self._secure = self._committing = False
        self._user: bytes | None = None
        self._sasl_continuation: Callable[[bytes], None] | None = None
        self._address: str | None = None
        self._directory = ""
        self._messages: list[MessageInfo] = []
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()
        self._idle_call: Any = None
        self._delayed: Any = None
        self._sender: MessageSender | None = None
        self._bad_commands = 0
        self._ip = "unknown"
        self._closed: Deferred | None = None  # fires when the connection is gone, once shut_down asked

    # connection life cycle

    def connectionMade(self) -> None:
        self._connected = True
        self.factory.sessions.add(self)
        self._secure = is_tls(self.transport)
        self._ip = str(getattr(self.transport.getPeer(), "host", "unknown"))
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)  # Nagle + small replies = 40 ms per command
            except (OSError, AttributeError, NotImplementedError):
                pass
        self._reset_idle()
        self._reply(b"+OK " + self.factory.hostname.encode("ascii", "replace") + b" POP3 ready.")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connected = False
        self.factory.sessions.discard(self)
        for call in (self._idle_call, self._delayed):
            if call is not None and call.active():
                call.cancel()
        if self._sender is not None:
            self._sender.stopProducing()
        if self._address is not None and not self._committing:
            self.factory.unlock(self._address)  # no UPDATE state: nothing deleted
            self._address = None
        if self._closed is not None:
            self._closed.callback(None)

    def shut_down(self) -> Deferred:
        """End the session for a server stop, as Dovecot does; nothing marked is deleted.

        A message being sent or a QUIT being committed finishes first.
        """
        if self._closed is None:
            self._closed = Deferred()
            if not self._busy:
                self._say_shutting_down()
        return self._closed

    def _say_shutting_down(self) -> None:
        self._reply(b"-ERR [SYS/TEMP] Server shutting down.")
        self._close()

    def _reset_idle(self) -> None:
        timeout = self.factory.idle_timeout_seconds
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(timeout)
        elif self._connected:
            self._idle_call = self.factory.clock.callLater(timeout, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self._sender is not None:
            # Mid-message a "-ERR" would read as message text; stopping the
            # producer closes the connection (a producer would keep it open).
            self._sender.stopProducing()
            return
        self._reply(b"-ERR Disconnected for inactivity.")
        self._close()

    def _reply(self, line: bytes) -> None:
        if self._connected:
            write_through(self.transport, line + b"\r\n")

    def _close(self) -> None:
        self._pending.clear()
        self.transport.loseConnection()

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
        if len(self._pending) > self.MAX_PENDING and not self._paused:
            self._paused = True  # a client pipelining without reading: stop reading too
            self.transport.pauseProducing()

    def _too_long(self) -> None:
        self._reply(b"-ERR Line too long.")
        self._close()

    def _drain(self) -> None:
        if self._draining:
            return  # a command finished synchronously inside the loop below
        self._draining = True
        try:
            while self._pending and not self._busy and self._connected and not self.transport.disconnecting:
                self._handle_line(self._pending.popleft().rstrip(b"\r"))
        finally:
            self._draining = False
        if self._paused and len(self._pending) < self.MAX_PENDING // 2 and self._connected:
            self._paused = False
            self.transport.resumeProducing()

    def _start_wait(self) -> None:
        self._busy = True

    def _done(self, _: object = None) -> None:
        self._busy = False
        if self._closed is not None and not self._committing and self._connected:
            return self._say_shutting_down()  # shut_down waited for this command
        self._drain()

    def _handle_line(self, line: bytes) -> None:
        if self._sasl_continuation is not None:
            continuation, self._sasl_continuation = self._sasl_continuation, None
            continuation(line)
            return
        command, _, arg = line.partition(b" ")
        name = command.upper().decode("ascii", "replace")
        handler = self._handlers().get(name)
        if handler is None:
            self._bad_command(b"-ERR Unknown command.")
            return
        try:
            handler(arg)
        except Exception:
            log.failure("POP3 command {command} failed", command=name)
            self._busy = False
            self._reply(SYS_TEMP)

    def _handlers(self) -> dict[str, Callable[[bytes], None]]:
        if self.state == AUTHORIZATION:
            return {
                "CAPA": self.do_CAPA, "USER": self.do_USER, "PASS": self.do_PASS,
                "AUTH": self.do_AUTH, "STLS": self.do_STLS, "QUIT": self.do_QUIT,
            }  # fmt: skip
        if self.state == TRANSACTION:
            return {
                "CAPA": self.do_CAPA, "STAT": self.do_STAT, "LIST": self.do_LIST,
                "UIDL": self.do_UIDL, "RETR": self.do_RETR, "TOP": self.do_TOP,
                "DELE": self.do_DELE, "NOOP": self.do_NOOP, "RSET": self.do_RSET,
                "QUIT": self.do_QUIT,
            }  # fmt: skip
        return {}

    def _bad_command(self, reply: bytes) -> None:
        self._bad_commands += 1
        if self._bad_commands > self.MAX_BAD_COMMANDS:
            self._reply(b"-ERR Too many invalid commands.")
            self._close()
            return
        self._reply(reply)

    # CAPA and QUIT, in either state

    def do_CAPA(self, arg: bytes) -> None:
        lines = [b"+OK", b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE"]
        if self.state == AUTHORIZATION:
            if self._stls_available():
                lines.append(b"STLS")
            if self._plaintext_allowed():
                lines += [b"USER", b"SASL PLAIN"]
        lines += [b"IMPLEMENTATION mailgate", b"."]
        self.transport.write(b"\r\n".join(lines) + b"\r\n")

    def do_QUIT(self, arg: bytes) -> None:
        if self.state == TRANSACTION:
            self._update()
            return
        self._reply(b"+OK Logging out.")
        self._close()

    # opening the maildrop, after login

    def _open_mailbox(self, address: str) -> None:
        try:
            directory = mailbox_path(self.factory.maildir_root, address)
        except ValueError:
            log.warn("POP3 login {address!r} has no usable mailbox path", address=address)
            self._reply(b"-ERR [SYS/PERM] Mailbox name is not usable.")
            self._done()
            return
        if not self.factory.lock(address):
            self._reply(b"-ERR [IN-USE] Mailbox is locked by another POP3 session.")
            self._done()
            return
        self._address = address
        d = self.factory.run_blocking(list_messages, directory)
        d.addCallbacks(self._listed, self._listing_failed, callbackArgs=(directory,))
        d.addErrback(self._crashed)

    def _listed(self, messages: list[MessageInfo], directory: str) -> None:
        if not self._connected:
            return
        self._directory, self._messages = directory, messages
        self.state = TRANSACTION
        self._reply(b"+OK Logged in.")
        self._done()

    def _listing_failed(self, failure: Failure) -> None:
        log.failure("POP3 listing of {address} failed", failure, address=self._address)
        if self._address is not None:
            self.factory.unlock(self._address)
            self._address = None
        self._reply(SYS_TEMP)
        self._done()

    def _crashed(self, failure: Failure) -> None:
        log.failure("POP3 session error", failure)
        self._reply(SYS_TEMP)
        self._done()

    # UPDATE state

    def _update(self) -> None:
        """Commit deletions and read marks (RFC 1939 section 6), then close."""
        self.state = UPDATE
        delete = [self._messages[i] for i in sorted(self._deleted)]
        seen = [self._messages[i] for i in sorted(self._retrieved)]
        self._committing = True
        self._start_wait()
        d = self.factory.run_blocking(commit, self._directory, delete, seen)
        d.addCallbacks(self._committed, self._commit_failed)
        d.addBoth(self._logged_out)

    def _committed(self, undeleted: list[MessageInfo]) -> None:
        if undeleted:
            log.warn(
                "POP3 could not delete {count} messages of {address}",
                count=len(undeleted),
                address=self._address,
            )
            self._reply(b"-ERR [SYS/TEMP] Some deleted messages were not removed.")
            return
        self._reply(b"+OK Logging out.")

    def _commit_failed(self, failure: Failure) -> None:
        log.failure("POP3 commit for {address} failed", failure, address=self._address)
        self._reply(b"-ERR [SYS/TEMP] Some deleted messages were not removed.")

    def _logged_out(self, _: object) -> None:
        if self._address is not None:
            self.factory.unlock(self._address)
            self._address = None
        self._committing = False
        if self._connected:
            self._close()
