"""etc/mailgate.service and etc/mailgate.socket: systemd accepts them, and socket activation works.

`systemd-analyze verify` checks that ExecStart's program exists, so the test
verifies a copy whose twistd is this virtualenv's (docs/systemd.md says the
same for checking an edited unit). Socket activation runs twistd under
`systemd-socket-activate`, which passes listening sockets the way systemd
does (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.gateway import BIN, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNIT, SOCKET = ROOT / "etc" / "mailgate.service", ROOT / "etc" / "mailgate.socket"


def test_systemd_analyze_verifies_the_unit_and_the_socket(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package 'systemd'; .ci/run installs it)")
    unit = UNIT.read_text()
    [twistd] = re.findall(r"^ExecStart=(\S+)", unit, re.MULTILINE)
    (tmp_path / "mailgate.service").write_text(unit.replace(twistd, str(BIN / "twistd")))
    shutil.copy(SOCKET, tmp_path / "mailgate.socket")
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", "mailgate.service", "mailgate.socket"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mailgate" not in done.stdout + done.stderr, done.stdout + done.stderr  # no warning about ours


def test_the_unit_runs_twistd_in_the_foreground_with_reload_and_hardening() -> None:
    unit = UNIT.read_text()
    [exec_start] = re.findall(r"^ExecStart=(.+)$", unit, re.MULTILINE)
    assert " -n " in exec_start and " --pidfile= " in exec_start and " mailgate --config " in exec_start
    assert "--logfile" not in exec_start  # standard output: the journal
    for line in ("ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/mailgate", "PrivateTmp=yes", "User=mailgate"):
        assert f"\n{line}\n" in unit, line


def test_socket_activation_with_systemd_endpoints(tmp_path: Path) -> None:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package 'systemd')")
    smtp, metrics = free_port(), free_port()
    config = tmp_path / "mailgate.toml"
    config.write_text('[server]\nhostname = "mx.example.test"\n[domains]\nlocal = ["example.test"]\n'
                      '[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "systemd:domain=INET:index=0"\n'
                      '[metrics]\nendpoint = "systemd:domain=INET:index=1"\n')
    log = tmp_path / "twistd.log"
    # systemd sets LISTEN_FDNAMES, which Twisted requires beside LISTEN_FDS: --fdname does it here.
    process = subprocess.Popen(
        [activate, "-E", "PYTHONPATH", "--fdname=smtp:metrics", "-l", f"127.0.0.1:{smtp}", "-l",
         f"127.0.0.1:{metrics}", str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log), "mailgate",
         "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )
    try:
        wait_for(lambda: _listening(smtp), 10, "systemd-socket-activate to listen")
        with socket.create_connection(("127.0.0.1", smtp), timeout=30) as client:  # this starts twistd
            assert client.recv(100) == b"220 mx.example.test ESMTP mailgate\r\n"
        wait_for(lambda: "mailgate started" in (log.read_text() if log.exists() else ""), 30, "mailgate")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as response:
            assert b"mailgate_smtp_sessions_total" in response.read()
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def _listening(port: int) -> bool:
    with open("/proc/net/tcp") as table:
        return any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in table)
