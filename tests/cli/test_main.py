"""Tests for the `mailgate` command: the installed console script, end to end."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.cli import main as cli

from mailgate.accounts import users_file as users
from mailgate.accounts.users_file import Accounts

MAILGATE = os.path.join(os.path.dirname(sys.executable), "mailgate")

GOOD_CONFIG = """\
[server]
hostname = "mail.example.test"
state_dir = "var"

[[listen]]
name = "mx"
protocol = "smtp"
endpoint = "tcp:2525:interface=127.0.0.1"

[domains]
local = ["example.test"]

[users]
file = "etc/users"
"""

BAD_CONFIG = """\
[[listen]]
name = "mx"
protocol = "gopher"
endpoint = "tcp:2525:interface=127.0.0.1"
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run directory holding etc/mailgate.toml; relative config paths resolve here.

    In-process hashing (setting up users, prompt tests) uses cost 4 to keep the suite fast;
    the subprocesses keep the default 12.
    """
    monkeypatch.setattr(users, "BCRYPT_ROUNDS", 4)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mailgate.toml").write_text(GOOD_CONFIG)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def mailgate(workdir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILGATE, *args], cwd=workdir, input=stdin, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1
    assert result.stderr == f"mailgate: {text}\n"
    assert "Traceback" not in result.stdout + result.stderr


def accounts(workdir: Path) -> Accounts:
    return Accounts(str(workdir / "etc" / "users"))


def given_user(workdir: Path, address: str, password: str = "pw") -> None:
    users.add_user(str(workdir / "etc" / "users"), address, password)


def test_add_with_password_stdin(workdir: Path) -> None:
    result = mailgate(workdir, "user", "add", "Alice@Example.Test", "--password-stdin",
                      stdin="s3cret pass\r\nignored second line\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert accounts(workdir).verify("alice@example.test", "s3cret pass")
    line = (workdir / "etc" / "users").read_text()
    assert line.startswith("alice@example.test:$2b$12$") and "s3cret" not in line


def test_duplicate_add_is_one_line_exit_1(workdir: Path) -> None:
    given_user(workdir, "alice@example.test", "a")
    result = mailgate(workdir, "user", "add", "alice@example.test", "--password-stdin",
                      stdin="b\n")
    assert_one_line_error(result, "user alice@example.test already exists")
    assert accounts(workdir).verify("alice@example.test", "a")


def test_passwd(workdir: Path) -> None:
    given_user(workdir, "alice@example.test", "old")
    result = mailgate(workdir, "user", "passwd", "alice@example.test", "--password-stdin",
                      stdin="new\n")
    assert result.returncode == 0, result.stderr
    assert accounts(workdir).verify("alice@example.test", "new")
    assert not accounts(workdir).verify("alice@example.test", "old")


def test_passwd_unknown_user(workdir: Path) -> None:
    result = mailgate(workdir, "user", "passwd", "bob@example.test", "--password-stdin",
                      stdin="pw\n")
    assert_one_line_error(result, "no such user bob@example.test")


def test_del_and_list(workdir: Path) -> None:
    for name in ("carol", "alice", "bob"):
        given_user(workdir, f"{name}@example.test")
    assert mailgate(workdir, "user", "del", "bob@example.test").returncode == 0
    result = mailgate(workdir, "user", "list")
    assert (result.returncode, result.stdout) == (0, "alice@example.test\ncarol@example.test\n")


def test_del_unknown_user(workdir: Path) -> None:
    result = mailgate(workdir, "user", "del", "nobody@example.test")
    assert_one_line_error(result, "no such user nobody@example.test")


def test_empty_password_refused(workdir: Path) -> None:
    result = mailgate(workdir, "user", "add", "alice@example.test", "--password-stdin", stdin="\n")
    assert_one_line_error(result, "empty password refused")
    assert not (workdir / "etc" / "users").exists()


def test_invalid_address(workdir: Path) -> None:
    result = mailgate(workdir, "user", "add", "alice", "--password-stdin", stdin="pw\n")
    assert result.returncode == 1
    assert result.stderr.startswith("mailgate: invalid address") and result.stderr.count("\n") == 1


def test_address_smtp_refuses_is_refused(workdir: Path) -> None:
    """SMTP would never accept mail for it, so no account is made."""
    result = mailgate(workdir, "user", "add", "a/b@example.test", "--password-stdin", stdin="pw\n")
    assert_one_line_error(result, "invalid address 'a/b@example.test' (Bad address syntax)")
    assert not (workdir / "etc" / "users").exists()


def test_quoted_address_is_stored_as_smtp_spells_it(workdir: Path) -> None:
    result = mailgate(workdir, "user", "add", '"x"@example.test', "--password-stdin", stdin="pw\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert accounts(workdir).addresses() == ["x@example.test"]


def test_foreign_domain_is_allowed_with_a_warning(workdir: Path) -> None:
    result = mailgate(workdir, "user", "add", "dave@elsewhere.test", "--password-stdin",
                      stdin="pw\n")
    assert result.returncode == 0
    assert result.stderr == "mailgate: warning: elsewhere.test is not in domains.local\n"
    assert accounts(workdir).exists("dave@elsewhere.test")


def test_version(workdir: Path) -> None:
    """`mailgate --version` names the package's version and exits 0 (SPEC 0.2)."""
    from mailgate import __version__

    result = mailgate(workdir, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"mailgate {__version__}\n", "")


def test_check_config_good(workdir: Path) -> None:
    result = mailgate(workdir, "check-config")
    assert (result.returncode, result.stdout) == (0, "config OK: etc/mailgate.toml\n")
    (workdir / "other.toml").write_text(GOOD_CONFIG)
    for args in (("--config", "other.toml", "check-config"),
                 ("check-config", "--config", "other.toml")):
        result = mailgate(workdir, *args)
        assert (result.returncode, result.stdout) == (0, "config OK: other.toml\n")


def test_check_config_bad(workdir: Path) -> None:
    (workdir / "bad.toml").write_text(BAD_CONFIG)
    result = mailgate(workdir, "--config", "bad.toml", "check-config")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "listen[0].protocol" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_command_with_bad_config_prints_problems(workdir: Path) -> None:
    (workdir / "bad.toml").write_text(BAD_CONFIG)
    result = mailgate(workdir, "--config", "bad.toml", "user", "list")
    assert result.returncode == 1
    assert "listen[0].protocol" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file(workdir: Path) -> None:
    result = mailgate(workdir, "--config", "nowhere.toml", "check-config")
    assert result.returncode == 1
    assert "nowhere.toml" in result.stderr and "Traceback" not in result.stderr


# In-process: prompts, which a subprocess without a terminal can't exercise.

def prompts(monkeypatch: pytest.MonkeyPatch, *answers: str) -> None:
    replies = iter(answers)
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(replies))


def test_prompted_password_must_match(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    prompts(monkeypatch, "one", "two")
    assert cli.main(["user", "add", "alice@example.test"]) == 1
    assert capsys.readouterr().err == "mailgate: passwords do not match\n"
    prompts(monkeypatch, "same", "same")
    assert cli.main(["user", "add", "alice@example.test"]) == 0
    assert accounts(workdir).verify("alice@example.test", "same")


def test_password_stdin_with_text_stream(workdir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert cli.main(["user", "add", "alice@example.test", "--password-stdin"]) == 0
    assert accounts(workdir).verify("alice@example.test", "pw")


# --rundir: relative paths in the configuration resolve against it, as for twistd --rundir.

@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A directory other than the run directory, to run the command from."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def test_rundir_finds_the_servers_users_file_from_anywhere(workdir: Path, elsewhere: Path) -> None:
    """Issue #12: from another directory `user list` printed nothing, and `user add` made a second file."""
    given_user(workdir, "alice@example.test")
    config = str(workdir / "etc" / "mailgate.toml")
    for args in (("--rundir", str(workdir), "--config", config, "user", "list"),
                 ("--config", config, "user", "list", "--rundir", str(workdir))):
        result = mailgate(elsewhere, *args)
        assert (result.returncode, result.stdout, result.stderr) == (0, "alice@example.test\n", "")
    result = mailgate(elsewhere, "--rundir", str(workdir), "--config", config, "user", "add", "bob@example.test",
                      "--password-stdin", stdin="pw\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert accounts(workdir).addresses() == ["alice@example.test", "bob@example.test"]
    assert list(elsewhere.iterdir()) == []


def test_a_relative_config_is_read_before_changing_to_rundir(workdir: Path, elsewhere: Path) -> None:
    """As twistd reads --config before it applies --rundir."""
    (elsewhere / "mailgate.toml").write_text(GOOD_CONFIG)
    given_user(workdir, "alice@example.test")
    result = mailgate(elsewhere, "--config", "mailgate.toml", "--rundir", str(workdir), "user", "list")
    assert (result.returncode, result.stdout) == (0, "alice@example.test\n")
    result = mailgate(elsewhere, "--config", "mailgate.toml", "--rundir", str(workdir), "check-config")
    assert (result.returncode, result.stdout) == (0, "config OK: mailgate.toml\n")


def test_a_missing_rundir_is_one_line(workdir: Path) -> None:
    result = mailgate(workdir, "--rundir", str(workdir / "nowhere"), "user", "list")
    assert_one_line_error(result, f"--rundir {workdir / 'nowhere'}: No such file or directory")


def test_an_empty_user_list_says_which_file_it_read(workdir: Path) -> None:
    result = mailgate(workdir, "user", "list")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == f"mailgate: no accounts in {workdir / 'etc' / 'users'} (no such file)\n"
    (workdir / "etc" / "users").write_text("# nobody yet\n")
    result = mailgate(workdir, "user", "list")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == f"mailgate: no accounts in {workdir / 'etc' / 'users'}\n"


def test_an_empty_queue_list_says_which_directory_it_read(workdir: Path) -> None:
    queue = workdir / "var" / "queue"
    result = mailgate(workdir, "queue", "list")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == f"mailgate: the queue is empty: {queue} (no such directory)\n"
    result = mailgate(workdir, "queue", "list", "--json")
    assert (result.returncode, result.stdout) == (0, "[]\n")
    assert result.stderr == f"mailgate: the queue is empty: {queue} (no such directory)\n"
    (queue / "env").mkdir(parents=True)
    result = mailgate(workdir, "queue", "list")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", f"mailgate: the queue is empty: {queue}\n")
