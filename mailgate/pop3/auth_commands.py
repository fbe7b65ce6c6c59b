"""POP3 AUTHORIZATION state (RFC 1939 section 4): USER/PASS, AUTH PLAIN (RFC 5034), STLS (RFC 2595)."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgate.accounts.cred import IMailAccount

log = Logger()

PLAINTEXT_REFUSED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
AUTH_FAILED = b"-ERR [AUTH] Authentication failed."
TOO_MANY_FAILURES = b"-ERR [AUTH] Too many authentication failures, try again later."


class POP3AuthCommands:
    """The AUTHORIZATION commands, mixed into the POP3 session.

    A successful login hands the address to the session's `_open_mailbox`,
    which locks and lists the maildrop before TRANSACTION begins.
    """

    def _plaintext_allowed(self: Any) -> bool:
        return self.factory.plaintext_auth == "always" or self._secure

    def _stls_available(self: Any) -> bool:
        return self.factory.tls_options is not None and not self._secure

    def do_USER(self: Any, arg: bytes) -> None:
        if not self._plaintext_allowed():
            self._reply(PLAINTEXT_REFUSED)
            return
        if not arg.strip():
            self._reply(b"-ERR Missing user name.")
            return
        self._user = arg.strip()
        self._reply(b"+OK")

    def do_PASS(self: Any, arg: bytes) -> None:
        if not self._plaintext_allowed():
            self._reply(PLAINTEXT_REFUSED)
            return
        if self._user is None:
            self._reply(b"-ERR No user name given.")
            return
        user, self._user = self._user, None
        self._login(user, arg)  # the whole rest of the line: passwords may hold spaces

    def do_AUTH(self: Any, arg: bytes) -> None:
        mechanism, _, initial = arg.strip().partition(b" ")
        if not mechanism:
            self.transport.write(b"+OK\r\n" + (b"PLAIN\r\n" if self._plaintext_allowed() else b"") + b".\r\n")
            return
        if mechanism.upper() != b"PLAIN":
            self._reply(b"-ERR Unsupported authentication mechanism.")
            return
        if not self._plaintext_allowed():
            self._reply(PLAINTEXT_REFUSED)
            return
        if initial:
            self._sasl_plain(initial)
            return
        self._sasl_continuation = self._sasl_plain
        self.transport.write(b"+ \r\n")

    def _sasl_plain(self: Any, response: bytes) -> None:
        """RFC 4616: authzid NUL authcid NUL passwd; "=" is an empty initial response."""
        response = response.strip()
        if response == b"*":
            self._reply(b"-ERR Authentication aborted.")
            return
        try:
            decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            self._reply(b"-ERR [AUTH] Invalid base64 data.")
            return
        parts = decoded.split(b"\x00")
        if len(parts) != 3:
            self._reply(b"-ERR [AUTH] Invalid PLAIN response.")
            return
        authzid, authcid, password = parts
        if authzid and authzid.lower() != authcid.lower():
            self._reply(b"-ERR [AUTH] Authorization identity not permitted.")
            return
        self._login(authcid, password)

    def do_STLS(self: Any, arg: bytes) -> None:
        if self._secure:
            self._reply(b"-ERR TLS is already active.")
            return
        start_tls = getattr(self.transport, "startTLS", None)
        if self.factory.tls_options is None or start_tls is None:
            self._reply(b"-ERR TLS support isn't enabled.")
            return
        self._reply(b"+OK Begin TLS negotiation now.")
        # RFC 2595 section 4: forget everything from before TLS, including
        # commands a man in the middle may have pipelined after STLS.
        self._pending.clear()
        self._buffer = b""
        self._user = None
        start_tls(self.factory.tls_options)
        self._secure = True

    def _login(self: Any, user: bytes, password: bytes) -> None:
        throttle = self.factory.throttle
        if throttle.should_disconnect(self._ip):
            self._reply(TOO_MANY_FAILURES)
            self._close()
            return
        self._start_wait()
        d = maybeDeferred(self.factory.portal.login, UsernamePassword(user, password), None, IMailAccount)
        d.addCallbacks(self._authenticated, self._login_failed)
        d.addErrback(self._crashed)

    def _authenticated(self: Any, result: tuple[Any, str, Callable[[], None]]) -> None:
        _, address, logout = result
        logout()
        if not self._connected:
            return
        self.factory.throttle.record_success(self._ip)
        self._open_mailbox(address)

    def _login_failed(self: Any, failure: Failure) -> None:
        if not failure.check(UnauthorizedLogin, UnhandledCredentials):
            log.failure("POP3 password check failed", failure)
            self._reply(b"-ERR [SYS/TEMP] Temporary authentication failure.")
            self._done()
            return
        throttle = self.factory.throttle
        throttle.record_failure(self._ip)
        delay, disconnect = throttle.delay_seconds(self._ip), throttle.should_disconnect(self._ip)
        if self._connected:
            self._delayed = self.factory.clock.callLater(delay, self._answer_failure, disconnect)

    def _answer_failure(self: Any, disconnect: bool) -> None:
        self._delayed = None
        if disconnect:
            self._reply(TOO_MANY_FAILURES)
            self._close()
            return
        self._reply(AUTH_FAILED)
        self._done()
