"""POP3 AUTHORIZATION state (RFC 1939 section 4): USER/PASS, AUTH PLAIN (RFC 5034), STLS (RFC 2595)."""

from __future__ import annotations

from collections.abc import Mapping

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.logger import Logger

from mailgate.accounts.cred import log_in
from mailgate.core.meters import NO_METERS, Meters
from mailgate.accounts.sasl import (
    SASLAuthzidRefused,
    SASLBadBase64,
    SASLCancelled,
    SASLMalformed,
    decode_response,
    parse_plain,
)
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.pop3.channel import Channel, Command, Wait
from mailgate.pop3.maildrop import Mailboxes, MaildropUnavailable

log = Logger()

PLAINTEXT_REFUSED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
AUTH_FAILED = b"-ERR [AUTH] Authentication failed."
TOO_MANY_FAILURES = b"-ERR [AUTH] Too many authentication failures, try again later."
# An attempt refused unchecked during its penalty: SYS/TEMP (RFC 3206), not AUTH, which would tell the
# owner, whose password may be right, that the credentials are wrong (see smtp.auth_command.PENALTY).
PENALTY = b"-ERR [SYS/TEMP] Too many authentication failures, try again later."
SASL_REFUSALS: dict[type[SASLMalformed], bytes] = {
    SASLBadBase64: b"-ERR [AUTH] Invalid base64 data.",
    SASLAuthzidRefused: b"-ERR [AUTH] Authorization identity not permitted.",
}


class Authorization:
    """The AUTHORIZATION commands and the user name given by USER.

    A successful login locks and lists the maildrop and hands it to the
    session, which then takes TRANSACTION commands.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        portal: Portal,
        throttle: AuthThrottle,
        mailboxes: Mailboxes,
        plaintext_auth: str,  # "tls" | "always" (security.plaintext_auth)
        meters: Meters = NO_METERS,
    ) -> None:
        self._channel = channel
        self._portal = portal
        self._throttle = throttle
        self._mailboxes = mailboxes
        self._plaintext_always = plaintext_auth == "always"
        self._user: bytes | None = None
        self._meters = meters

    def commands(self) -> Mapping[str, Command]:
        return {
            "USER": self.do_USER, "PASS": self.do_PASS, "AUTH": self.do_AUTH,
            "STLS": self.do_STLS, "QUIT": self.do_QUIT,
        }  # fmt: skip

    def capabilities(self) -> list[bytes]:
        lines = [b"STLS"] if self._channel.tls_possible else []
        if self._plaintext_allowed():
            lines += [b"USER", b"SASL PLAIN"]  # like Dovecot: not offered where it would be refused
        return lines

    def connection_lost(self) -> None:
        pass  # nothing is held before login

    def _plaintext_allowed(self) -> bool:
        return self._plaintext_always or self._channel.secure

    def do_USER(self, arg: bytes) -> None:
        if not self._plaintext_allowed():
            self._channel.reply(PLAINTEXT_REFUSED)
            return
        if not arg.strip():
            self._channel.reply(b"-ERR Missing user name.")
            return
        self._user = arg.strip()
        self._channel.reply(b"+OK")

    def do_PASS(self, arg: bytes) -> Wait | None:
        if not self._plaintext_allowed():
            self._channel.reply(PLAINTEXT_REFUSED)
            return None
        if self._user is None:
            self._channel.reply(b"-ERR No user name given.")
            return None
        user, self._user = self._user, None
        return self._login(user, arg)  # the whole rest of the line: passwords may hold spaces

    def do_AUTH(self, arg: bytes) -> Wait | None:
        mechanism, _, initial = arg.strip().partition(b" ")
        if not mechanism:
            self._channel.write(b"+OK\r\n" + (b"PLAIN\r\n" if self._plaintext_allowed() else b"") + b".\r\n")
            return None
        if mechanism.upper() != b"PLAIN":
            self._channel.reply(b"-ERR Unsupported authentication mechanism.")
            return None
        if not self._plaintext_allowed():
            self._channel.reply(PLAINTEXT_REFUSED)
            return None
        return self._sasl_plain(initial)

    async def _sasl_plain(self, initial: bytes) -> None:
        """RFC 5034: the PLAIN message (RFC 4616) as an initial response or after a "+ " challenge."""
        response = initial
        if not initial:
            self._channel.write(b"+ \r\n")
            response = await self._channel.read_line()
        try:
            authcid, password = parse_plain(decode_response(response))
        except SASLCancelled:
            self._channel.reply(b"-ERR Authentication aborted.")
            return
        except SASLMalformed as error:
            self._channel.reply(SASL_REFUSALS.get(type(error), b"-ERR [AUTH] Invalid PLAIN response."))
            return
        await self._login(authcid.encode("utf-8"), password.encode("utf-8"))

    def do_STLS(self, arg: bytes) -> None:
        if self._channel.secure:
            self._channel.reply(b"-ERR TLS is already active.")
            return
        if not self._channel.tls_possible:
            self._channel.reply(b"-ERR TLS support isn't enabled.")
            return
        self._channel.reply(b"+OK Begin TLS negotiation now.")
        self._user = None  # RFC 2595 section 4: nothing from before TLS counts
        self._channel.start_tls()

    def do_QUIT(self, arg: bytes) -> None:
        self._channel.reply(b"+OK Logging out.")
        self._channel.close()

    async def _login(self, user: bytes, password: bytes) -> None:
        ip, account = self._channel.peer_ip, user.decode("utf-8", "replace")
        if not self._throttle.admit(ip, account, "pop3"):
            self._channel.reply(PENALTY)
            if self._throttle.locked_out(ip, account):
                self._channel.close()
            return
        try:
            try:
                address = await log_in(self._portal, user, password)
            finally:
                self._throttle.release(ip, account)
        except (UnauthorizedLogin, UnhandledCredentials):
            self._meters.auth_failed("pop3")
            log.warn("auth failed: POP3 from [{client}]: user=<{user}>", event="auth.failure", protocol="pop3",
                     client=ip, user=_printable(user[:64]))
            await self._answer_failure(ip, account)
            return
        except Exception:
            log.failure("POP3 password check failed")
            self._channel.reply(b"-ERR [SYS/TEMP] Temporary authentication failure.")
            return
        if not self._channel.is_connected:
            return
        self._throttle.record_success(ip, account)
        await self._open(address)

    async def _answer_failure(self, ip: str, account: str) -> None:
        """Answer a wrong password late, later the more recent failures (ip, account) has; cut off at the limit."""
        self._throttle.record_failure(ip, account)
        delay = self._throttle.delay_seconds(ip, account)
        disconnect = self._throttle.locked_out(ip, account)
        if not self._channel.is_connected:
            return
        await self._channel.pause(delay)
        if disconnect:
            self._channel.reply(TOO_MANY_FAILURES)
            self._channel.close()
            return
        self._channel.reply(AUTH_FAILED)

    async def _open(self, address: str) -> None:
        try:
            maildrop = await self._mailboxes.open(address)
        except MaildropUnavailable as refusal:
            self._channel.reply(refusal.reply)
            return
        if not self._channel.is_connected:
            maildrop.release()
            return
        self._channel.enter_transaction(maildrop)
        log.info("pop3: login: user=<{user}> from [{client}], {count} message(s)", event="pop3.login",
                 user=address, client=self._channel.peer_ip, count=len(maildrop.messages))
        self._channel.reply(b"+OK Logged in.")


def _printable(name: bytes) -> str:
    """A user name as the client sent it, safe in one log line: no line break to forge another."""
    return "".join(char if char.isprintable() else "?" for char in name.decode("utf-8", "replace"))
