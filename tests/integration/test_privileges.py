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

from tests.support.gateway import BIN, wait_for

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
