"""Hashes in the users file: bcrypt and argon2, bare or with Dovecot's `{SCHEME}` prefix; others named in the log."""

from __future__ import annotations

import tomllib
from pathlib import Path

import bcrypt
import pytest
from twisted.logger import Logger, formatEvent

from mailgate.accounts import users_file as users
from mailgate.accounts.users_file import Accounts

try:
    import argon2
except ImportError:  # declared in pyproject.toml (the first test): this environment predates it
    argon2 = None
needs_argon2 = pytest.mark.skipif(argon2 is None, reason="argon2-cffi is not installed: pip install -e .")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def bcrypt_2y(password: str) -> str:
    """A `$2y$` hash, as Dovecot's BLF-CRYPT and PHP write them (the bcrypt library writes `$2b$`)."""
    return "$2y$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()[4:]


def argon2id(password: str) -> str:
    return argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)


def test_argon2_cffi_is_a_declared_dependency() -> None:
    """SPEC: bcrypt or argon2; argon2 hashes silently never verified where the package was missing."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith(("argon2-cffi>", "argon2-cffi=")) for d in dependencies)


@needs_argon2
@pytest.mark.parametrize("make, prefix", [
    (bcrypt_2y, ""),
    (bcrypt_2y, "{BLF-CRYPT}"),
    (argon2id, ""),
    (argon2id, "{ARGON2ID}"),
])
def test_supported_forms_verify(make, prefix: str) -> None:
    hashed = prefix + make("s3cret")
    assert users.check_password("s3cret", hashed)
    assert not users.check_password("wrong", hashed)
    assert users.hash_problem(hashed) is None


@needs_argon2
def test_argon2i_with_its_dovecot_prefix() -> None:
    hashed = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                                   type=argon2.Type.I).hash("s3cret")
    assert users.check_password("s3cret", "{ARGON2I}" + hashed)


@pytest.mark.parametrize("hashed, problem", [
    ("{SHA512-CRYPT}$6$salt$abc", "a {SHA512-CRYPT} hash"),
    ("{PLAIN}s3cret", "a {PLAIN} hash"),
    ("$6$salt$abc", "a $6$ (SHA512-CRYPT) hash"),
    ("$1$salt$abc", "a $1$ (MD5-CRYPT) hash"),
    ("s3cret", "no hash mailgate knows (a plain password?)"),
    ("{BLF-CRYPT}$argon2id$v=19$x", "a {BLF-CRYPT} prefix on a hash of another kind"),
])
def test_unsupported_forms_are_named_without_the_hash(hashed: str, problem: str) -> None:
    assert users.hash_problem(hashed) == problem
    assert not users.check_password("s3cret", hashed)


def test_a_malformed_bcrypt_hash_is_named() -> None:
    assert users.hash_problem("$2b$04$garbage") == "a malformed bcrypt hash"


@needs_argon2
def test_a_malformed_argon2_hash_is_named() -> None:
    assert users.hash_problem("{ARGON2ID}$argon2id$v=19$nonsense") == "a malformed argon2 hash"


@pytest.mark.skipif(argon2 is not None, reason="argon2-cffi is installed")
def test_without_argon2_cffi_the_log_says_so() -> None:
    assert users.hash_problem("$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g") == \
        "an argon2 hash, but the argon2-cffi package is not installed"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(users, "log", Logger(observer=lambda event: lines.append(formatEvent(event))))
    monkeypatch.setattr(users, "BCRYPT_ROUNDS", 4)
    return lines


@needs_argon2
def test_an_unsupported_scheme_is_logged_once_per_account(tmp_path: Path, logged: list[str]) -> None:
    path = tmp_path / "users"
    path.write_text("alice@example.test:{SHA512-CRYPT}$6$salt$abc\nbob@example.test:{PLAIN}secret\n"
                    f"carol@example.test:{{ARGON2ID}}{argon2id('pw')}\n")
    accounts = Accounts(str(path))
    for _ in range(3):
        assert not accounts.verify("alice@example.test", "whatever")
        assert not accounts.verify("bob@example.test", "secret")
        assert accounts.verify("carol@example.test", "pw")
    assert logged == [
        (f"users.file: {path}: {address} has a {{{scheme}}} hash, which mailgate cannot check "
         "(it checks bcrypt and argon2): that account cannot log in")
        for address, scheme in (("alice@example.test", "SHA512-CRYPT"), ("bob@example.test", "PLAIN"))
    ]
    assert "secret" not in "".join(logged)


def test_dovecot_passwd_file_lines_keep_only_the_hash(tmp_path: Path) -> None:
    """Dovecot's passwd-file has more fields after the hash (uid:gid:gecos:home:shell:extra)."""
    path = tmp_path / "users"
    path.write_text(f"alice@example.test:{{BLF-CRYPT}}{bcrypt_2y('pw')}:1000:1000::/home/alice::\n")
    assert Accounts(str(path)).verify("alice@example.test", "pw")
