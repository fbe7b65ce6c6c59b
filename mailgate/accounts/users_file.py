"""The users file: one `address:hash` line per account, read on change, replaced atomically."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import hmac
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import bcrypt
from twisted.logger import Logger

from mailgate.core.addresses import AddressError, normalize_mailbox
from mailgate.store.durable import (
    Owner,
    giveable,
    inherited_owner,
    make_directories,
    replace_file,
)

BCRYPT_ROUNDS = 12  # tests lower this in-process; files written by the CLI use 12
BCRYPT_MAX_BYTES = 72
AUTH_CACHE_SECONDS = 300.0  # a verified password is trusted again for this long
AUTH_CACHE_ENTRIES = 10_000  # bcrypt ignores anything longer; bcrypt>=5 raises instead

Stamp = tuple[int, int, int]  # st_mtime_ns, st_size, st_ino

log = Logger()


class UserError(Exception):
    """A refused account change; str() is a one-line message for the user."""


def normalize_address(address: str) -> str:
    """`address` as SMTP spells it (lower-cased, unquoted), or UserError if it can't be an account.

    The rule is SMTP's own (mailgate.core.addresses.normalize_mailbox): an
    account under an address SMTP refuses, or spells another way, could never
    receive mail. The file adds two refusals of its own: ':' ends the key (a
    source route has one too) and a line starting with '#' is a comment.
    """
    address = address.strip()
    if ":" in address:
        raise UserError(f"invalid address {address!r} (':' can't be in a users-file address)")
    try:
        normalized = normalize_mailbox(address)
    except AddressError as error:
        raise UserError(f"invalid address {address!r} ({error})") from None
    if normalized.startswith("#"):
        raise UserError(f"invalid address {address!r} (a leading '#' would read back as a comment)")
    return normalized


def hash_password(password: str) -> str:
    """A bcrypt modular-crypt hash (`$2b$...`) of `password` at BCRYPT_ROUNDS."""
    secret = password.encode("utf-8")
    if len(secret) > BCRYPT_MAX_BYTES:
        raise UserError(f"password is longer than {BCRYPT_MAX_BYTES} bytes (the bcrypt limit)")
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode("ascii")


_BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
# Dovecot's names for the schemes mailgate checks, and the hashes each may hold.
_PREFIXES = {"BLF-CRYPT": ("$2a$", "$2b$", "$2y$"), "ARGON2ID": ("$argon2id$",), "ARGON2I": ("$argon2i$",)}
_CRYPT_IDS = {"1": "MD5-CRYPT", "5": "SHA256-CRYPT", "6": "SHA512-CRYPT", "md5": "MD5-CRYPT", "sha1": "SHA1-CRYPT",
              "y": "yescrypt", "7": "scrypt", "gy": "gost-yescrypt"}


def check_password(password: str, hashed: str) -> bool:
    """True if `password` matches a bcrypt or argon2 hash, bare or with Dovecot's `{SCHEME}` prefix."""
    if hash_problem(hashed) is not None:
        return False
    bare = _without_prefix(hashed)[1]
    if bare.startswith("$argon2"):
        return _check_argon2(password, bare)
    # Hashes made by other tools silently used only the first 72 bytes.
    secret = password.encode("utf-8")[:BCRYPT_MAX_BYTES]
    try:
        return bcrypt.checkpw(secret, bare.encode("ascii"))
    except ValueError:  # a malformed hash that looked well formed
        return False


def hash_problem(hashed: str) -> str | None:
    """None for a hash mailgate can check; otherwise what it is, for the log (never the hash itself)."""
    scheme, bare = _without_prefix(hashed)
    if scheme is not None and scheme not in _PREFIXES:
        return f"a {{{scheme}}} hash"
    if scheme is not None and not bare.startswith(_PREFIXES[scheme]):
        return f"a {{{scheme}}} prefix on a hash of another kind"
    if bare.startswith(("$2a$", "$2b$", "$2y$")):
        return None if _BCRYPT.fullmatch(bare) else "a malformed bcrypt hash"
    if bare.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        return _argon2_problem(bare)
    if bare.startswith("$") and bare.count("$") >= 2:
        crypt_id = bare.split("$")[1]
        named = f" ({_CRYPT_IDS[crypt_id]})" if crypt_id in _CRYPT_IDS else ""
        return f"a ${crypt_id}${named} hash"
    return "no hash mailgate knows (a plain password?)"


def _without_prefix(hashed: str) -> tuple[str | None, str]:
    """(SCHEME, hash) for Dovecot's `{SCHEME}hash`; (None, hash) without one."""
    if hashed.startswith("{") and "}" in hashed:
        scheme, _, bare = hashed[1:].partition("}")
        return scheme.upper(), bare
    return None, hashed


def _argon2_problem(hashed: str) -> str | None:
    try:
        from argon2 import extract_parameters
        from argon2.exceptions import InvalidHashError
    except ImportError:  # a declared dependency, but an install can still lack it
        return "an argon2 hash, but the argon2-cffi package is not installed"
    try:
        extract_parameters(hashed)
    except (InvalidHashError, ValueError):
        return "a malformed argon2 hash"
    return None


def _check_argon2(password: str, hashed: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    try:
        return PasswordHasher().verify(hashed, password)
    except (Argon2Error, InvalidHashError):
        return False


@functools.cache
def _dummy_hash(rounds: int) -> str:
    return bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=rounds)).decode("ascii")


def parse_users(text: str) -> dict[str, str]:
    """address -> hash for each `address:hash` line; blanks, comments and junk skipped."""
    users: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        address, colon, rest = line.partition(":")
        hashed = rest.partition(":")[0].strip()  # Dovecot's passwd-file has more fields after the hash
        if colon and hashed:
            users.setdefault(address.strip().lower(), hashed)  # first wins, as in _find
    return users


class Accounts:
    """The accounts in one users file, re-read whenever the file changes."""

    def __init__(self, path: str, cache_seconds: float = AUTH_CACHE_SECONDS) -> None:
        self._path = path
        self._lock = threading.Lock()  # verify() runs in reactor threads
        self._stamp: Stamp | None = None
        self._hashes: dict[str, str] = {}
        self._cache_seconds = cache_seconds
        self._cache_key = os.urandom(32)
        self._verified: dict[bytes, float] = {}  # digest -> when bcrypt said yes
        self._warned: set[tuple[str, str]] = set()  # (address, problem) already logged

    def exists(self, address: str) -> bool:
        return address.lower() in self._current()

    def addresses(self) -> list[str]:
        return sorted(self._current())

    def verify(self, address: str, password: str) -> bool:
        """Check a password; blocking (bcrypt), so call it in a thread."""
        hashed = self._current().get(address.lower())
        problem = None if hashed is None else hash_problem(hashed)
        if problem is not None:
            self._warn_once(address.lower(), problem)
        if hashed is None or problem is not None:
            # Spend a hash's worth of time so response times don't reveal who exists.
            check_password(password, _dummy_hash(BCRYPT_ROUNDS))
            return False
        if not check_password(password, hashed):
            return False
        with self._lock:
            self._verified[self._digest(address, hashed, password)] = time.monotonic()
            while len(self._verified) > AUTH_CACHE_ENTRIES:
                del self._verified[next(iter(self._verified))]
        return True

    def _warn_once(self, address: str, problem: str) -> None:
        """One log line per account and kind of hash, not one per login."""
        with self._lock:
            if (address, problem) in self._warned:
                return
            self._warned.add((address, problem))
        log.warn("users.file: {path}: {address} has {problem}, which mailgate cannot check (it checks bcrypt "
                 "and argon2): that account cannot log in", path=self._path, address=address, problem=problem)

    def verified_recently(self, address: str, password: str) -> bool:
        """True if this exact password was verified within the cache period.

        Cheap (no bcrypt), so a client that logs in every minute, as POP3
        clients do, pays the hash once, like Dovecot's auth cache. The entry
        is a keyed digest that includes the stored hash: a password change
        or a deleted user makes it miss at once.
        """
        hashed = self._current().get(address.lower())
        if hashed is None or self._cache_seconds <= 0:
            return False
        with self._lock:
            when = self._verified.get(self._digest(address, hashed, password))
        return when is not None and time.monotonic() - when < self._cache_seconds

    def _digest(self, address: str, hashed: str, password: str) -> bytes:
        material = "\0".join((address.lower(), hashed, password)).encode("utf-8", "surrogatepass")
        return hmac.new(self._cache_key, material, hashlib.sha256).digest()

    def _current(self) -> dict[str, str]:
        with self._lock:
            try:
                stamp = _stamp_of(os.stat(self._path))
            except FileNotFoundError:
                self._stamp, self._hashes = None, {}
                return self._hashes
            if stamp != self._stamp:
                self._reload()
            return self._hashes

    def _reload(self) -> None:
        try:
            with open(self._path, encoding="utf-8", errors="replace") as f:
                # fstat of the file actually read: a replace after our stat() shows next call.
                stamp = _stamp_of(os.fstat(f.fileno()))
                text = f.read()
        except FileNotFoundError:
            self._stamp, self._hashes = None, {}
            return
        self._stamp, self._hashes = stamp, parse_users(text)


def _stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def add_user(path: str, address: str, password: str) -> None:
    """Add an account; UserError if it exists already."""
    address = normalize_address(address)
    line = f"{address}:{_new_hash(password)}\n"

    def edit(lines: list[str]) -> list[str]:
        if _find(lines, address) is not None:
            raise UserError(f"user {address} already exists")
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return [*lines, line]

    _rewrite(path, edit)


def set_password(path: str, address: str, password: str) -> None:
    """Replace an account's hash; UserError if there is no such user."""
    address = normalize_address(address)
    line = f"{address}:{_new_hash(password)}\n"

    def edit(lines: list[str]) -> list[str]:
        index = _find(lines, address)
        if index is None:
            raise UserError(f"no such user {address}")
        lines[index] = line
        return lines

    _rewrite(path, edit)


def delete_user(path: str, address: str) -> None:
    """Remove an account; UserError if there is no such user.

    An entry written before addresses were checked as SMTP checks them
    (`a/b@x`, `"x"@y`) can be removed too, by the spelling it was stored under.
    """
    stored = address.strip().lower()  # how entries were keyed before
    try:
        canonical = normalize_address(address)
    except UserError as error:
        canonical, refusal = stored, error
    else:
        refusal = UserError(f"no such user {canonical}")
    keys = {canonical, stored}

    def edit(lines: list[str]) -> list[str]:
        kept = [line for line in lines if _address_of(line) not in keys]
        if len(kept) == len(lines):
            raise refusal
        return kept

    _rewrite(path, edit)


def _new_hash(password: str) -> str:
    if not password:
        raise UserError("empty password refused")
    return hash_password(password)  # before taking the lock: it is the slow part


def _address_of(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or ":" not in stripped:
        return None
    return stripped.partition(":")[0].strip().lower()


def _find(lines: list[str], address: str) -> int | None:
    for index, line in enumerate(lines):
        if _address_of(line) == address:
            return index
    return None


def _rewrite(path: str, edit: Callable[[list[str]], list[str]]) -> None:
    """Read-modify-write under a lock, so concurrent `mailgate user` runs can't lose updates.

    The new file keeps the owner, group and mode of the one it replaces (a
    new one: its directory's owner and group, mode 0600), and so do the
    directories and the lock file made for it: root running `mailgate
    user` beside a server started with --uid/--gid must not lock the
    server out of its own users file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    make_directories(directory, 0o755, giveable(inherited_owner(directory)))
    with _locked(path + ".lock", giveable(inherited_owner(directory))):
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.readlines()  # comments and unknown lines are kept as they are
                info = os.fstat(f.fileno())
            owner, mode = (info.st_uid, info.st_gid), stat.S_IMODE(info.st_mode)
        except FileNotFoundError:
            lines, owner, mode = [], inherited_owner(directory), 0o600
        replace_file(path, "".join(edit(lines)).encode("utf-8", "surrogateescape"), mode=mode,
                     owner=giveable(owner))


@contextmanager
def _locked(lock_path: str, owner: Owner | None) -> Iterator[None]:
    # The lock file stays: unlinking it would let a waiter lock a file nobody else sees.
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
    except FileExistsError:
        fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
