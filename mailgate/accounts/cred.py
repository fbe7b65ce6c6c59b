"""Password authentication shared by POP3 and SMTP AUTH: cred checker, portal, throttle."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer



class PasswordStore(Protocol):
    """What the checker needs from mailgate.accounts.users_file.Accounts."""

    def verify(self, address: str, password: str) -> bool: ...


class IMailAccount(Interface):
    """Avatar interface: the avatar is the lower-cased address as str."""


BlockingRunner = Callable[..., "Deferred[Any]"]


def thread_runner(reactor: IReactorThreads) -> BlockingRunner:
    """Run blocking calls in the reactor's thread pool (bcrypt takes ~0.1 s+)."""
    def run(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run


def _text(value: str | bytes) -> str:
    """Credentials arrive as bytes from the wire; a password that is not UTF-8 can't match."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


@implementer(ICredentialsChecker)
class AccountsChecker:
    """Check IUsernamePassword against the users file, never in the reactor thread.

    Fires with the lower-cased address; UnauthorizedLogin for a wrong or
    unknown user; any other failure (users file unreadable) passes through so
    the protocol can answer with a temporary error instead of "bad password".
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: PasswordStore, run_blocking: BlockingRunner) -> None:
        self._accounts = accounts
        self._run_blocking = run_blocking

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        try:
            address = _text(credentials.username).strip()
            password = _text(credentials.password)
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin("credentials are not UTF-8"))
        if not address or "\x00" in address or "\x00" in password:
            return fail(UnauthorizedLogin("empty user name or NUL in credentials"))
        recently = getattr(self._accounts, "verified_recently", None)
        if recently is not None and recently(address, password):
            return succeed(address.lower().encode("utf-8"))
        d = self._run_blocking(self._accounts.verify, address, password)
        d.addCallback(self._avatar_id, address)
        return d

    @staticmethod
    def _avatar_id(ok: bool, address: str) -> bytes:
        """twisted.cred's avatar ids are bytes: the address's UTF-8 (AddressRealm decodes it)."""
        if not ok:
            raise UnauthorizedLogin("bad credentials")
        return address.lower().encode("utf-8")


@implementer(IRealm)
class AddressRealm:
    """The avatar is just the address: protocols look the mailbox up themselves."""

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: type[Interface]
    ) -> tuple[type[Interface], str, Callable[[], None]]:
        if not isinstance(avatarId, bytes):
            raise UnauthorizedLogin("anonymous login is not offered")
        return interfaces[0] if interfaces else IMailAccount, avatarId.decode("utf-8"), lambda: None


def build_portal(accounts: PasswordStore, reactor: IReactorThreads) -> Portal:
    """A Portal over the users file, checking passwords in the reactor's threads."""
    return portal_over(accounts, thread_runner(reactor))


def portal_over(accounts: PasswordStore, run_blocking: BlockingRunner) -> Portal:
    """A Portal over the users file; log in with `log_in` (or credentials, None, IMailAccount)."""
    # The casts say what @implementer declares: mypy without mypy-zope can't see it.
    realm = cast(IRealm, AddressRealm())
    checker = cast(ICredentialsChecker, AccountsChecker(accounts, run_blocking))
    return Portal(realm, [checker])


async def log_in(portal: Portal, username: bytes, password: bytes) -> str:
    """The lower-cased address the credentials log in as.

    UnauthorizedLogin (or UnhandledCredentials) for wrong ones; any other
    error means the check itself failed, which protocols answer as temporary.
    """
    credentials = cast(ICredentials, UsernamePassword(username, password))  # @implementer, as above
    _, avatar, logout = await portal.login(credentials, None, IMailAccount)
    logout()  # the avatar is a plain address: nothing to release
    return str(avatar)


class AuthThrottle:
    """Slow down and cut off password guessing, per client IP.

    Failures older than `window_seconds` are forgotten; a success clears the
    IP. The delay doubles per recent failure (0, 1, 2, 4, 8 s ... capped), and
    after `disconnect_after` failures the session should be closed. State is
    per IP, so it spans connections: opening many sessions does not reset it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        window_seconds: float = 300.0,
        disconnect_after: int = 5,
        max_delay_seconds: float = 8.0,
        max_tracked_ips: int = 10_000,
    ) -> None:
        self._clock: IReactorTime = clock
        self._window = window_seconds
        self._disconnect_after = disconnect_after
        self._max_delay = max_delay_seconds
        self._max_tracked = max_tracked_ips
        self._failures: dict[str, deque[float]] = {}

    def record_failure(self, ip: str) -> None:
        failures = self._failures.pop(ip, None) or deque(maxlen=max(self._disconnect_after * 2, 16))
        failures.append(self._clock.seconds())
        self._failures[ip] = failures  # re-insert: dict order = least recently failed first
        while len(self._failures) > self._max_tracked:
            del self._failures[next(iter(self._failures))]  # bound memory under a scan

    def record_success(self, ip: str) -> None:
        self._failures.pop(ip, None)

    def failures(self, ip: str) -> int:
        """Failures from ip within the window."""
        failures = self._failures.get(ip)
        if not failures:
            return 0
        horizon = self._clock.seconds() - self._window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[ip]
            return 0
        return len(failures)

    def delay_seconds(self, ip: str) -> float:
        """How long to wait before answering ip's next failed attempt."""
        count = self.failures(ip)
        if count == 0:
            return 0.0
        return float(min(2 ** (count - 1), self._max_delay))

    def should_disconnect(self, ip: str) -> bool:
        return self.failures(ip) >= self._disconnect_after
