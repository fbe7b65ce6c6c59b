"""Files `mailgate` writes as root keep the server's owner, group and mode: the console script, as root."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from mailgate.outbound.spool import QueuedMessage, QueueStore, RecipientState
from mailgate.store.maildir_writer import StoredMessage
from tests.support.gateway import BIN, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")

SERVER = (12345, 12346)  # the uid and gid a server started with --uid/--gid runs as
CONFIG = '[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:2525"\n[domains]\nlocal = ["example.test"]\n'


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def mailgate(root: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / "mailgate"), "--config", str(root / "mailgate.toml"), *args], cwd=root,
                            input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A run directory that belongs to the server's user, as after `twistd --uid/--gid`."""
    (tmp_path / "mailgate.toml").write_text(CONFIG)
    os.chown(tmp_path, *SERVER)
    return tmp_path


def test_user_commands_keep_the_users_files_owner_group_and_mode(root: Path) -> None:
    """Issue #12: `user add` as root left it root:root 0600 and every login got 454."""
    (root / "etc").mkdir()
    users = root / "etc" / "users"
    users.write_text("# accounts\n")
    os.chown(root / "etc", *SERVER)
    os.chown(users, *SERVER)
    users.chmod(0o640)
    mailgate(root, "user", "add", "alice@example.test", "--password-stdin", stdin="one\n")
    assert owner_and_mode(users) == (*SERVER, 0o640)
    mailgate(root, "user", "passwd", "alice@example.test", "--password-stdin", stdin="two\n")
    assert owner_and_mode(users) == (*SERVER, 0o640)
    mailgate(root, "user", "del", "alice@example.test")
    assert owner_and_mode(users) == (*SERVER, 0o640)
    assert users.read_text() == "# accounts\n"


def test_a_new_users_file_and_its_directory_get_the_owner_of_the_directory_above(root: Path) -> None:
    mailgate(root, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
    assert owner_and_mode(root / "etc")[:2] == SERVER
    assert owner_and_mode(root / "etc" / "users") == (*SERVER, 0o600)
    assert owner_and_mode(root / "etc" / "users.lock")[:2] == SERVER


def queued(root: Path) -> QueueStore:
    """One message in a spool that belongs to the server's user."""
    store = QueueStore(str(root / "var" / "queue"))
    store.prepare()
    entry = QueuedMessage(id="Q1", sender="a@x.test", arrived=1000.0, next_attempt=time.time() + 3600,
                          recipients=[RecipientState("b@y.test", "mx")])
    store.add(entry, StoredMessage.build(b"Received: by mx\n", [b"Subject: s\n\nhello\n"], 19, 3))
    for directory, _, files in os.walk(root / "var"):
        for path in [directory, *(os.path.join(directory, name) for name in files)]:
            os.chown(path, *SERVER)
    return store


def test_queue_flush_without_a_server_keeps_the_spool_the_servers(root: Path) -> None:
    queued(root)
    mailgate(root, "queue", "flush")
    queue = root / "var" / "queue"
    assert owner_and_mode(queue / "env" / "Q1")[:2] == SERVER  # rewritten with the new next attempt
    assert owner_and_mode(queue / "lock")[:2] == SERVER  # made by the command: the server must open it
    mailgate(root, "queue", "delete", "Q1")
    assert not (queue / "env" / "Q1").exists()


def test_queue_requests_to_a_running_server_are_the_servers(root: Path) -> None:
    server = queued(root)
    assert server.lock()  # what a running server holds, in a lock file of its own
    os.chown(root / "var" / "queue" / "lock", *SERVER)
    try:
        command = subprocess.Popen([str(BIN / "mailgate"), "--config", str(root / "mailgate.toml"), "queue",
                                    "flush"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            control = root / "var" / "queue" / "control"
            [request] = wait_for(lambda: list(control.iterdir()), 10, "the request")
            assert owner_and_mode(request)[:2] == SERVER
            request.unlink()  # served
            assert command.wait(30) == 0
        finally:
            if command.poll() is None:
                command.kill()
    finally:
        server.unlock()
