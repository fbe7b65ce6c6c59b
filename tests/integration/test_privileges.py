"""`twistd --uid/--gid`: ports below 1024 are bound as root, then mail is handled unprivileged."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.gateway import BIN, client_tls, free_port, wait_for

NOBODY = 65534


def free_privileged_port() -> int:
    for port in range(600, 1024):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a port below 1024 needs root")
def test_low_port_bound_before_dropping_privileges() -> None:
    root = Path(tempfile.mkdtemp(prefix="mailgate-uid-"))
    try:
        root.chmod(0o755)
        os.chown(root, NOBODY, NOBODY)
        port = free_privileged_port()
        config = root / "mailgate.toml"
        config.write_text(
            '[server]\nhostname = "mx.example.test"\n[domains]\nlocal = ["example.test"]\n'
            '[users]\nfile = "users"\n'
            f'[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:{port}:interface=127.0.0.1"\n'
        )
        subprocess.run([str(BIN / "mailgate"), "--config", str(config), "user", "add", "alice@example.test",
                        "--password-stdin"], input=b"pw\n", cwd=root, check=True, capture_output=True)
        os.chown(root / "users", NOBODY, NOBODY)
        log = root / "twistd.log"
        process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log), f"--uid={NOBODY}", f"--gid={NOBODY}",
             "mailgate", "--config", str(config)],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: "mailgate started" in log.read_text() if log.exists() else False, 30, "start-up")
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                assert client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: low\r\n\r\nhi\r\n") == {}
            [stored] = list((root / "var" / "mail" / "example.test" / "alice" / "new").iterdir())
            assert stored.stat().st_uid == NOBODY  # written after the drop, not as root
            assert int(open(f"/proc/{process.pid}/status").read().split("Uid:")[1].split()[0]) == NOBODY
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def readme_command(root: Path, config: Path, *, daemon: bool = True) -> list[str]:
    """README "Running it for real", with this test's paths (and -n when not `daemon`)."""
    return [str(BIN / "twistd"), *([] if daemon else ["-n"]), f"--pidfile={root / 'mailgate.pid'}",
            f"--logfile={root / 'mailgate.log'}", f"--uid={NOBODY}", f"--gid={NOBODY}", f"--rundir={root / 'lib'}",
            "mailgate", "--config", str(config)]


def a_root_owned_setup(tls: str = "starttls") -> tuple[Path, Path, int]:
    """/etc/mailgate-like config and a /var/lib/mailgate-like run directory, both root's, nothing in them."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-readme-"))
    root.chmod(0o755)
    (root / "lib").mkdir(mode=0o755)
    port = free_port()
    config = root / "mailgate.toml"
    config.write_text(
        '[server]\nhostname = "mx.example.test"\n[domains]\nlocal = ["example.test"]\n'
        f'[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:{port}:interface=127.0.0.1"\ntls = "{tls}"\n'
    )
    return root, config, port


def owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="--uid/--gid need root")
def test_readme_command_on_a_fresh_run_directory() -> None:
    """Issue #12: the pair was made as root, leaving var/ root's, then PermissionError: 'var/queue'."""
    root, config, port = a_root_owned_setup()
    try:
        started = subprocess.run(readme_command(root, config), capture_output=True, text=True, timeout=60, check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        log = root / "mailgate.log"
        wait_for(lambda: "mailgate started" in log.read_text() if log.exists() else False, 30, "start-up")
        pid = int((root / "mailgate.pid").read_text())
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.starttls(context=client_tls())
                assert client.ehlo()[0] == 250
            lib = root / "lib"
            for path in ("var", "var/queue", "var/mail", "var/tls", "var/tls/cert.pem", "var/tls/key.pem"):
                assert owner(lib / path) == (NOBODY, NOBODY), path
            assert "Traceback" not in log.read_text()
        finally:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the daemon to stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="--uid/--gid need root")
def test_a_state_directory_the_user_cannot_write_is_one_line() -> None:
    """What an older run left behind: var/queue root's and 0700."""
    root, config, _ = a_root_owned_setup(tls="none")
    try:
        (root / "lib" / "var" / "queue").mkdir(parents=True, mode=0o700)
        os.chown(root / "lib" / "var", NOBODY, NOBODY)
        started = subprocess.run(readme_command(root, config, daemon=False), capture_output=True, text=True, check=False,
                                 timeout=60)
        assert started.returncode == 1
        assert "Traceback" not in started.stdout + started.stderr + (root / "mailgate.log").read_text()
        assert started.stderr.splitlines() == [
            f"server.state_dir: var/queue is not writable by uid {NOBODY} (owner 0:0, mode 0700)"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="--uid/--gid need root")
def test_a_daemon_that_cannot_start_says_why_and_exits() -> None:
    """Daemonizing, twistd's launcher waits for the daemon's word: it must get one, not wait forever."""
    root, config, _ = a_root_owned_setup(tls="none")
    try:
        (root / "lib" / "var" / "queue").mkdir(parents=True, mode=0o700)
        started = subprocess.run(readme_command(root, config), capture_output=True, text=True, timeout=60, check=False)
        assert started.returncode == 1
        assert f"server.state_dir: var/queue is not writable by uid {NOBODY}" in started.stderr
        assert f"server.state_dir: var/queue is not writable by uid {NOBODY} (owner 0:0, mode 0700)" \
            in (root / "mailgate.log").read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="--uid/--gid need root")
def test_a_users_file_the_user_cannot_read_is_one_line() -> None:
    root, config, _ = a_root_owned_setup(tls="none")
    try:
        (root / "lib" / "etc").mkdir()
        (root / "lib" / "etc" / "users").write_text("alice@example.test:$2b$04$x\n")
        (root / "lib" / "etc" / "users").chmod(0o600)
        started = subprocess.run(readme_command(root, config, daemon=False), capture_output=True, text=True, check=False,
                                 timeout=60)
        assert started.returncode == 1
        assert started.stderr.splitlines() == [
            f"users.file: etc/users is not readable by uid {NOBODY} (owner 0:0, mode 0600)"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
