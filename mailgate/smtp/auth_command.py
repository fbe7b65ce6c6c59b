"""SMTP AUTH (RFC 4954): PLAIN and LOGIN exchanges over twisted.cred, throttled per IP."""

from __future__ import annotations

import base64
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mailgate.accounts.cred import IMailAccount
from mailgate.smtp.sasl import SASLCancelled, SASLMalformed, decode_response, parse_plain

log = Logger()

MECHANISMS = ("PLAIN", "LOGIN")
USERNAME_PROMPT = base64.b64encode(b"Username:").decode()
PASSWORD_PROMPT = base64.b64encode(b"Password:").decode()


class SMTPAuthCommand:
    """The AUTH command, mixed into the SMTP session.

    The exchange is a coroutine: `_read_line()` hands it the client's next
    line, so the session's ordering of pipelined input holds throughout.
    """

    def smtp_AUTH(self: Any, argument: str) -> Any:
        refusal = self._auth_refusal()
        if refusal:
            return self._send(*refusal)
        mechanism, _, initial = argument.partition(" ")
        if mechanism.upper() not in MECHANISMS:
            return self._send(504, "5.5.4 Unrecognized authentication type")
        return self._authenticate(mechanism.upper(), initial.strip())

    def _auth_refusal(self: Any) -> tuple[int, str] | None:
        if self.factory.listener.auth == "none" or self.factory.portal is None:
            return 502, "5.5.1 AUTH not available"
        if self._authenticated_as is not None:
            return 503, "5.5.1 Already authenticated"
        if self._envelope is not None:
            return 503, "5.5.1 AUTH not allowed during a mail transaction"
        if not self._auth_offered():
            return 530, "5.7.0 Must issue a STARTTLS command first"
        return None

    def _auth_offered(self: Any) -> bool:
        if self.factory.listener.auth == "none" or self.factory.portal is None:
            return False
        return self._secure() or self.factory.config.security.plaintext_auth == "always"

    async def _authenticate(self: Any, mechanism: str, initial: str) -> Any:
        try:
            username, password = await self._credentials(mechanism, initial)
        except SASLCancelled:
            return self._reply(501, "5.0.0 Authentication cancelled")
        except SASLMalformed:
            return self._reply(501, "5.5.2 Malformed authentication data")
        credentials = UsernamePassword(username.encode("utf-8"), password.encode("utf-8"))
        try:
            _, avatar, _ = await self.factory.portal.login(credentials, None, IMailAccount)
        except UnauthorizedLogin:
            return await self._auth_failed(username)
        except Exception:
            log.failure("AUTH check failed for {ip}", ip=self._client_ip)
            return self._reply(454, "4.7.0 Temporary authentication failure")
        self.factory.throttle.record_success(self._client_ip)
        self._authenticated_as = avatar
        log.info("{ip}: authenticated as {user}", ip=self._client_ip, user=avatar)
        return self._reply(235, "2.7.0 Authentication successful")

    async def _credentials(self: Any, mechanism: str, initial: str) -> tuple[str, str]:
        if mechanism == "PLAIN":
            if not initial:
                self._send(334, "")
                initial = await self._read_line()
            return parse_plain(decode_response(initial))
        username = decode_response(initial) if initial else None
        if username is None:
            self._send(334, USERNAME_PROMPT)
            username = decode_response(await self._read_line())
        self._send(334, PASSWORD_PROMPT)
        password = decode_response(await self._read_line())
        try:
            return username.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLMalformed() from None

    async def _auth_failed(self: Any, username: str) -> Any:
        """535 after a delay that grows with the IP's recent failures; 421 at the limit."""
        throttle, ip = self.factory.throttle, self._client_ip
        throttle.record_failure(ip)
        log.warn("{ip}: AUTH failed for {user!r}", ip=ip, user=username[:64])
        delay = throttle.delay_seconds(ip)
        if delay:
            await deferLater(self.factory.clock, delay)
        if throttle.should_disconnect(ip):
            self._close(421, "4.7.0 Too many authentication failures")
            return None
        return self._reply(535, "5.7.8 Authentication credentials invalid")

    def _read_line(self: Any) -> Deferred:
        """The client's next line; the idle timer runs while we wait for it."""
        self.setTimeout(self.factory.config.limits.command_timeout_seconds)
        self._line_waiter = Deferred()
        return self._line_waiter
