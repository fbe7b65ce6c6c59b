"""Tests for mailgate.accounts.cred: the cred checker over the users file and the portal."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

import bcrypt
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailgate.accounts import users_file as users
from mailgate.accounts.cred import AccountsChecker, IMailAccount, build_portal
from mailgate.accounts.users_file import Accounts


def run_now(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A synchronous stand-in for the thread pool."""
    return maybeDeferred(function, *args)


def write_users(case: SynchronousTestCase, entries: dict[str, str]) -> str:
    directory = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "users")
    with open(path, "w") as handle:
        for address, password in entries.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
            handle.write(f"{address}:{hashed}\n")
    return path


class BrokenAccounts:
    def verify(self, address: str, password: str) -> bool:
        raise OSError("users file unreadable")


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(users, "BCRYPT_ROUNDS", 4)  # the unknown-user dummy hash
        self.accounts = Accounts(write_users(self, {"alice@example.test": "s3cret pw"}))
        self.checker = AccountsChecker(self.accounts, run_now)

    def test_good_password_gives_lower_cased_address(self) -> None:
        d = self.checker.requestAvatarId(UsernamePassword(b"Alice@Example.TEST", b"s3cret pw"))
        self.assertEqual(self.successResultOf(d), b"alice@example.test")

    def test_text_credentials_work_too(self) -> None:
        d = self.checker.requestAvatarId(UsernamePassword("alice@example.test", "s3cret pw"))
        self.assertEqual(self.successResultOf(d), b"alice@example.test")

    def test_wrong_password(self) -> None:
        d = self.checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"nope"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_a_recent_success_skips_the_thread_and_bcrypt(self) -> None:
        calls: list[Any] = []
        checker = AccountsChecker(self.accounts, lambda f, *a: calls.append(f) or run_now(f, *a))
        credentials = UsernamePassword(b"alice@example.test", b"s3cret pw")
        self.successResultOf(checker.requestAvatarId(credentials))
        self.assertEqual(self.successResultOf(checker.requestAvatarId(credentials)), b"alice@example.test")
        self.assertEqual(len(calls), 1)
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"x")),
                             UnauthorizedLogin)
        self.assertEqual(len(calls), 2)

    def test_unknown_user(self) -> None:
        d = self.checker.requestAvatarId(UsernamePassword(b"bob@example.test", b"s3cret pw"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_undecodable_or_empty_credentials(self) -> None:
        for username, password in [(b"alice@example.test", b"\xff"), (b"", b"x"), (b"a\x00b", b"x")]:
            d = self.checker.requestAvatarId(UsernamePassword(username, password))
            self.failureResultOf(d, UnauthorizedLogin)

    def test_store_errors_are_not_bad_passwords(self) -> None:
        """A broken users file must surface as a temporary error, not "wrong password"."""
        checker = AccountsChecker(BrokenAccounts(), run_now)
        d = checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"x"))
        self.failureResultOf(d, OSError)


class PortalTests(TestCase):
    """Through the real reactor thread pool, as the servers use it."""

    def setUp(self) -> None:
        self.patch(users, "BCRYPT_ROUNDS", 4)
        self.portal = build_portal(Accounts(write_users(self, {"alice@example.test": "pw"})), reactor)

    async def _login(self, password: bytes) -> Any:
        return await self.portal.login(UsernamePassword(b"alice@example.test", password), None, IMailAccount)

    def test_login(self) -> Deferred[None]:
        async def check() -> None:
            interface, avatar, logout = await self._login(b"pw")
            self.assertIs(interface, IMailAccount)
            self.assertEqual(avatar, "alice@example.test")
            logout()

        return Deferred.fromCoroutine(check())

    def test_login_refused(self) -> Deferred[None]:
        async def check() -> None:
            with self.assertRaises(UnauthorizedLogin):
                await self._login(b"wrong")

        return Deferred.fromCoroutine(check())
