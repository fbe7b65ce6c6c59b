#!/usr/bin/env python3
"""Memory per idle SMTP session: the gateway's RSS before and after N sessions that sit idle.

Not a test: each run builds a throw-away gateway in a temporary directory,
starts `twistd -n mailgate` on it, and reads the server's VmRSS from
/proc/<pid>/status

    before : after one full SMTP transaction and a few sessions opened and
             closed (imports, the disk thread pool and the first-session
             allocations are paid), all sessions closed;
    idle   : with N sessions open, each having read its 220 greeting;
    after  : once every session has said QUIT and the server has closed it.

KB per idle session = (idle - before) / N. Prints median (min-max) of the runs
as a Markdown table. Target (issue 7): at most 50 KB per idle session.

    .venv/bin/python bench/idle_sessions.py [--sessions 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ALICE = "alice@example.test"
TARGET_KB = 50
WARM_UP_SESSIONS = 20  # opened and closed before the measured sessions are

CONFIG = """\
[server]
hostname = "bench.example.test"
[[listen]]
name = "smtp"
protocol = "smtp"
endpoint = "tcp:{port}:interface=127.0.0.1"
tls = "none"
[domains]
local = ["example.test"]
[users]
file = "etc/users"
[limits]
max_connections_per_ip = {max_connections}
connection_rate = "off"
"""


class Gateway:
    """`twistd -n mailgate` on a throw-away configuration; stopped by its pid."""

    def __init__(self, root: Path, sessions: int) -> None:
        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.config = root / "mailgate.toml"
        # room for the measured sessions or the warm-up's, twice over: a session that was just
        # sent 221 counts until the gateway sees its socket close, which may come after the next connects
        self.config.write_text(CONFIG.format(port=self.port, max_connections=max(sessions, WARM_UP_SESSIONS) * 2))
        (root / "etc").mkdir()
        self.log = root / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def add_user(self, address: str) -> None:
        subprocess.run(
            [str(BIN / "mailgate"), "--config", str(self.config), "user", "add", address, "--password-stdin"],
            input=b"bench password\n", cwd=self.root, check=True, capture_output=True,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(self.log),
             "mailgate", "--config", str(self.config)],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"twistd exited {self.process.returncode}:\n{self.log.read_text()}")
            if self.log.exists() and "mailgate started" in self.log.read_text() and self._accepts():
                return
            time.sleep(0.05)
        raise SystemExit("mailgate did not start within 30 s")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def status(self, field: str) -> int:
        """A numeric line of /proc/<pid>/status, e.g. VmRSS in kB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise SystemExit(f"no {field} in /proc/{self.process.pid}/status")

    def open_fds(self) -> int:
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def raise_fd_limit(wanted: int) -> None:
    """This process holds one socket per session; twistd inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise the hard limit
            return
        except (ValueError, OSError):
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {wanted}: run as root or raise it") from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def open_sessions(port: int, count: int) -> list[tuple[socket.socket, object]]:
    """One at a time, each reading its greeting: the listen backlog never matters."""
    sessions = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        reader = sock.makefile("rb")
        sessions.append((sock, reader))
        greeting = reader.readline()
        if not greeting.startswith(b"220 "):
            raise SystemExit(f"session {index + 1}: no greeting but {greeting!r}")
    return sessions


def close_sessions(sessions: list[tuple[socket.socket, object]]) -> None:
    for sock, _ in sessions:
        sock.sendall(b"QUIT\r\n")
    for sock, reader in sessions:
        if not reader.readline().startswith(b"221 "):
            raise SystemExit("a session did not answer QUIT with 221")
        reader.close()
        sock.close()


def wait_for_fds(gateway: Gateway, at_most: int) -> None:
    deadline = time.monotonic() + 30
    while gateway.open_fds() > at_most:
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway still holds {gateway.open_fds()} descriptors")
        time.sleep(0.05)


def one_run(sessions: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="mailgate-bench-idle-"))
    gateway = Gateway(root, sessions)
    try:
        gateway.add_user(ALICE)
        gateway.start()
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:  # warm-up
            client.sendmail("bench@client.test", [ALICE], b"Subject: warm-up\r\n\r\nx\r\n")
        close_sessions(open_sessions(gateway.port, WARM_UP_SESSIONS))
        fds_before = gateway.open_fds()
        wait_for_fds(gateway, fds_before)
        before = gateway.status("VmRSS")
        held = open_sessions(gateway.port, sessions)
        idle = gateway.status("VmRSS")
        fds_idle = gateway.open_fds()
        close_sessions(held)
        wait_for_fds(gateway, fds_before + 2)
        after = gateway.status("VmRSS")
        if fds_idle < sessions:
            raise SystemExit(f"only {fds_idle} descriptors open with {sessions} sessions")
        return {
            "before_mb": before / 1024,
            "idle_mb": idle / 1024,
            "after_mb": after / 1024,
            "kb_per_session": (idle - before) / sessions,
            "kept_kb_per_session": (after - before) / sessions,
        }
    finally:
        gateway.stop()
        shutil.rmtree(root, ignore_errors=True)


def spread(values: list[float], digits: int = 1) -> str:
    """median (min-max), the anchors' format."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="idle sessions held at once")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    raise_fd_limit(args.sessions * 2 + 200)

    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for key, value in one_run(args.sessions).items():
            results.setdefault(key, []).append(value)

    print(f"# mailgate idle SMTP sessions, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}\n")
    print(f"{args.sessions} sessions, each after its 220 greeting; {args.runs} runs, fresh gateway each; "
          "median (min–max)\n")
    print("| RSS before, MB | RSS with sessions idle, MB | **KB per idle session** | RSS after QUIT, MB "
          "| KB per session kept after QUIT |")
    print("|---|---|---|---|---|")
    cells = [spread(results["before_mb"]), spread(results["idle_mb"]), spread(results["kb_per_session"]),
             spread(results["after_mb"]), spread(results["kept_kb_per_session"])]
    print("| " + " | ".join(cells) + " |\n")
    median = statistics.median(results["kb_per_session"])
    verdict = "within" if median <= TARGET_KB else "OVER"
    print(f"target: ≤ {TARGET_KB} KB per idle session: {verdict} ({median:.1f} KB)")


if __name__ == "__main__":
    main()
