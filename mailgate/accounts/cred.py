"""Password authentication shared by POP3 and SMTP AUTH: the cred checker and portal over the users file.

How failures are throttled is mailgate.limits.auth_throttle's business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer

from mailgate.core.addresses import AddressError, normalize_mailbox



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
            address = login_address(_text(credentials.username).strip())
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


def login_address(name: str) -> str:
    """A login name under the one address rule (mailgate.core.addresses), so `JOSÉ@Bücher.example`
    is the account and mailbox `josé@xn--bcher-kva.example`; what is no address is only lower-cased."""
    try:
        return normalize_mailbox(name)
    except AddressError:
        return name.lower()


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
