"""Tests for mailgate.accounts.users_file: parsing, reload on change, atomic locked rewrites, passwords."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import bcrypt
import pytest

from mailgate.accounts import users_file as users
from mailgate.accounts.users_file import Accounts, UserError, add_user, delete_user, set_password


@pytest.fixture(autouse=True)
def cheap_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cost 4 instead of 12 keeps the suite fast; the format is the same."""
    monkeypatch.setattr(users, "BCRYPT_ROUNDS", 4)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "etc" / "users")


def quick_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_default_cost_is_12() -> None:
    """Only the fixture lowers the cost; the module default stays at 12."""
    source = Path(users.__file__).read_text()
    assert "BCRYPT_ROUNDS = 12" in source


def test_hash_is_bcrypt_modular_crypt() -> None:
    hashed = users.hash_password("s3cret")
    assert hashed.startswith("$2b$04$")
    assert users.check_password("s3cret", hashed)
    assert not users.check_password("wrong", hashed)


def test_check_password_rejects_plain_and_malformed_hashes() -> None:
    assert not users.check_password("s3cret", "s3cret")
    assert not users.check_password("s3cret", "$2b$04$garbage")
    assert not users.check_password("s3cret", "")


def test_overlong_password_is_refused_on_hashing() -> None:
    with pytest.raises(UserError, match="72 bytes"):
        users.hash_password("x" * 73)


def test_parse_skips_blanks_comments_and_junk() -> None:
    text = (
        "# accounts\n"
        "\n"
        "Alice@Example.Test:$2b$04$aaa\n"
        "   # indented comment\n"
        "no colon here\n"
        "empty@example.test:\n"
        "bob@example.test:$2b$04$bbb\r\n"
    )
    assert users.parse_users(text) == {
        "alice@example.test": "$2b$04$aaa",
        "bob@example.test": "$2b$04$bbb",
    }


@pytest.mark.parametrize("address", [
    "alice", "@example.test", "alice@", "a b@example.test", "a:b@example.test",
    "#alice@example.test", "alice@exa mple.test", "alice@-bad.test", "alice@example..test",
    # refused by SMTP too (mailgate.core.addresses), so such an account could never receive mail
    "a/b@example.test", "a..b@example.test", '"a/b"@example.test', "a" * 65 + "@example.test",
    # would corrupt the file: ':' ends the key (source routes have one), '#' starts a comment
    '"a:b"@example.test', "@relay.test:alice@example.test", '"#alice"@example.test', "alice@[IPv6:::1]",
    "alice@example.test\nbob@example.test",
])
def test_invalid_addresses_are_refused(path: str, address: str) -> None:
    with pytest.raises(UserError, match="invalid address") as refused:
        add_user(path, address, "pw")
    assert "\n" not in str(refused.value)
    assert not os.path.exists(path)


@pytest.mark.parametrize(("address", "stored"), [
    ('"x"@example.test', "x@example.test"),  # SMTP delivers "x"@ to x@ (RFC 5322 3.4.1)
    ('"Al.Ice"@Example.Test', "al.ice@example.test"),
    ("alice@example.test.", "alice@example.test"),
    ('"a b"@example.test', '"a b"@example.test'),  # needs its quotes, as in SMTP
    ("alice@[192.0.2.1]", "alice@[192.0.2.1]"),
])
def test_addresses_are_stored_as_smtp_spells_them(path: str, address: str, stored: str) -> None:
    assert users.normalize_address(address) == stored
    add_user(path, address, "pw")
    assert Accounts(path).addresses() == [stored]


def test_entries_from_before_the_smtp_rule_can_be_deleted(path: str) -> None:
    os.makedirs(os.path.dirname(path))
    Path(path).write_text(f'a/b@example.test:{quick_hash("pw")}\n"x"@example.test:{quick_hash("pw")}\n')
    delete_user(path, "A/B@example.test")
    delete_user(path, '"x"@example.test')
    assert Accounts(path).addresses() == []
    with pytest.raises(UserError, match="invalid address"):
        delete_user(path, "a/b@example.test")


def test_addresses_are_lower_cased(path: str) -> None:
    add_user(path, "Alice@Example.TEST", "pw")
    assert Accounts(path).addresses() == ["alice@example.test"]
    assert Accounts(path).exists("ALICE@example.test")


def test_missing_file_means_no_users(path: str) -> None:
    accounts = Accounts(path)
    assert accounts.addresses() == []
    assert not accounts.exists("alice@example.test")
    assert not accounts.verify("alice@example.test", "pw")


def test_verify_right_wrong_unknown(path: str) -> None:
    add_user(path, "alice@example.test", "right")
    accounts = Accounts(path)
    assert accounts.verify("alice@example.test", "right")
    assert accounts.verify("ALICE@example.test", "right")
    assert not accounts.verify("alice@example.test", "wrong")
    assert not accounts.verify("nobody@example.test", "right")


def test_unknown_user_still_checks_a_hash(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown user costs a bcrypt check too, so timing doesn't reveal who exists."""
    checked: list[str] = []
    real = users.check_password
    monkeypatch.setattr(users, "check_password", lambda p, h: checked.append(h) or real(p, h))
    assert not Accounts(path).verify("nobody@example.test", "pw")
    assert len(checked) == 1 and checked[0].startswith("$2b$")


def test_reload_on_change(path: str) -> None:
    accounts = Accounts(path)
    assert accounts.addresses() == []
    add_user(path, "alice@example.test", "pw")
    assert accounts.addresses() == ["alice@example.test"]
    set_password(path, "alice@example.test", "new")
    assert accounts.verify("alice@example.test", "new")
    delete_user(path, "alice@example.test")
    assert accounts.addresses() == []
    os.unlink(path)
    assert accounts.addresses() == []


def test_reload_notices_same_size_edit_in_place(path: str) -> None:
    """An editor writing in place keeps the inode and size; mtime_ns still changes."""
    Path(path).parent.mkdir(parents=True)
    Path(path).write_text(f"alice@example.test:{quick_hash('pw')}\n")
    accounts = Accounts(path)
    assert accounts.exists("alice@example.test")
    before = os.stat(path)
    Path(path).write_text(Path(path).read_text().replace("alice", "alicf"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert accounts.addresses() == ["alicf@example.test"]


def test_unchanged_file_is_not_reread(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    add_user(path, "alice@example.test", "pw")
    accounts = Accounts(path)
    accounts.addresses()
    monkeypatch.setattr(users, "parse_users", lambda text: pytest.fail("re-read"))
    assert accounts.exists("alice@example.test")


def test_add_existing_user_is_refused(path: str) -> None:
    add_user(path, "alice@example.test", "pw")
    with pytest.raises(UserError, match="^user alice@example.test already exists$"):
        add_user(path, "ALICE@example.test", "other")
    assert Accounts(path).verify("alice@example.test", "pw")


def test_passwd_and_del_of_unknown_user_are_refused(path: str) -> None:
    with pytest.raises(UserError, match="no such user"):
        set_password(path, "nobody@example.test", "pw")
    with pytest.raises(UserError, match="no such user"):
        delete_user(path, "nobody@example.test")


def test_empty_password_is_refused(path: str) -> None:
    with pytest.raises(UserError, match="empty password"):
        add_user(path, "alice@example.test", "")
    assert not os.path.exists(path)


def test_file_format_mode_and_no_temp_files(path: str) -> None:
    add_user(path, "alice@example.test", "pw")
    add_user(path, "bob@example.test", "pw")
    set_password(path, "alice@example.test", "new")
    delete_user(path, "bob@example.test")
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 1
    address, _, hashed = lines[0].partition(":")
    assert address == "alice@example.test" and hashed.startswith("$2b$")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(os.path.dirname(path))) == ["users", "users.lock"]


def test_failed_edit_leaves_file_untouched(path: str) -> None:
    add_user(path, "alice@example.test", "pw")
    before = os.stat(path)
    with pytest.raises(UserError):
        add_user(path, "alice@example.test", "pw")
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(os.path.dirname(path))) == ["users", "users.lock"]


def test_comments_and_other_lines_survive_edits(path: str) -> None:
    Path(path).parent.mkdir(parents=True)
    Path(path).write_text("# managed by mailgate\n\ncarol@example.test:$2b$04$ccc")
    add_user(path, "alice@example.test", "pw")
    delete_user(path, "carol@example.test")
    text = Path(path).read_text()
    assert text.startswith("# managed by mailgate\n\nalice@example.test:$2b$")
    assert "carol" not in text


def test_concurrent_adds_in_threads_lose_nothing(path: str) -> None:
    errors: list[BaseException] = []

    def add(n: int) -> None:
        try:
            add_user(path, f"user{n}@example.test", "pw")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(Accounts(path).addresses()) == 20


def test_concurrent_adds_in_processes_lose_nothing(path: str) -> None:
    script = (
        "import sys\n"
        "from mailgate.accounts import users_file as users\n"
        "users.BCRYPT_ROUNDS = 4\n"
        "for n in range(10):\n"
        "    users.add_user(sys.argv[1], f'p{sys.argv[2]}-{n}@example.test', 'pw')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, path, str(p)]) for p in range(4)
    ]
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0, 0, 0]
    assert len(Accounts(path).addresses()) == 40


def test_verified_password_is_cached_until_it_changes(path: str) -> None:
    users.add_user(path, "alice@example.test", "old")
    accounts = users.Accounts(path)
    assert not accounts.verified_recently("alice@example.test", "old")  # nothing verified yet
    assert accounts.verify("alice@example.test", "old")
    assert accounts.verified_recently("Alice@Example.test", "old")
    assert not accounts.verified_recently("alice@example.test", "wrong")
    users.set_password(path, "alice@example.test", "new")
    assert not accounts.verified_recently("alice@example.test", "old")
    users.delete_user(path, "alice@example.test")
    assert not accounts.verified_recently("alice@example.test", "new")


def test_cache_expires(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    users.add_user(path, "alice@example.test", "pw")
    accounts = users.Accounts(path, cache_seconds=300)
    now = [1000.0]
    monkeypatch.setattr(users.time, "monotonic", lambda: now[0])
    assert accounts.verify("alice@example.test", "pw")
    now[0] += 299
    assert accounts.verified_recently("alice@example.test", "pw")
    now[0] += 2
    assert not accounts.verified_recently("alice@example.test", "pw")
    assert not users.Accounts(path, cache_seconds=0).verified_recently("alice@example.test", "pw")
