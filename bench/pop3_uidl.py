#!/usr/bin/env python3
"""POP3 benchmark: login + STAT + UIDL on a 20,000-message Maildir, and RETR throughput.

Not a test: it builds a throw-away gateway in a temporary directory, starts
`twistd -n mailgate` on it, times sessions with poplib over 127.0.0.1 and
prints median (min-max) of the repetitions as Markdown tables.

    .venv/bin/python bench/pop3_uidl.py [--messages 20000] [--runs 3]

Two measurements, as /work/shared/bench-anchors/pop3_bench.py makes them:

scale : N messages of SIZE bytes in new/, named as mailgate names them
        (",S=" disk size and ",W=" CRLF size in the name, so listing needs
        no open()). login (includes listing the Maildir) + STAT + UIDL + QUIT,
        cold (page, dentry and inode caches dropped before each run: needs
        root) and warm. The same again for files named by another tool
        (no ",S="/",W="), where listing must read each file to count lines.
        A login to an empty mailbox gives the fixed cost of the session and
        of the bcrypt password check.
retr  : 1000 x 10 KB refilled before each run, then login, LIST, UIDL,
        RETR all, DELE all, QUIT; RETR messages/s. Plain, and again after STLS.

The listener runs with tls = "starttls" and plaintext_auth = "always" so a
session may log in without TLS, like the Dovecot anchor (ssl = no).
"""

from __future__ import annotations

import argparse
import os
import poplib
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).parent
ALICE, BOB, PASSWORD = "alice@example.test", "bob@example.test", "bench password"
HOSTNAME = "bench.example.test"
DROP_CACHES = "/proc/sys/vm/drop_caches"

CONFIG = """\
[server]
hostname = "{hostname}"
[[listen]]
name = "pop3"
protocol = "pop3"
endpoint = "tcp:{port}:interface=127.0.0.1"
tls = "starttls"
[security]
plaintext_auth = "always"
[domains]
local = ["example.test"]
[store]
maildir_root = "var/mail"
[users]
file = "etc/users"
"""


# the Maildir


def message_bytes(index: int, size: int) -> bytes:
    """pop3_bench.py's message: three headers, 77-character lines, LF line ends."""
    header = b"From: bench@client.test\nTo: alice@example.test\nSubject: pop bench %d\n\n" % index
    return header + (b"x" * 77 + b"\n") * max(1, (size - len(header)) // 78)


def fill(maildir: Path, count: int, size: int, mailgate_names: bool = True) -> None:
    """Empty the Maildir, write `count` messages into new/, then sync.

    Written directly (no fsync per file, one sync at the end) to save time;
    names follow mailgate.store.maildir_writer.unique_name: "SECONDS.MUSECSPPIDQN.HOST,S=disk,W=crlf".
    """
    for sub in ("tmp", "new", "cur"):
        shutil.rmtree(maildir / sub, ignore_errors=True)
        (maildir / sub).mkdir(parents=True, mode=0o700)
    now = time.time()
    seconds, micros = int(now), int(now % 1 * 1e6)
    for index in range(count):
        data = message_bytes(index, size)
        if mailgate_names:
            crlf_size = len(data) + data.count(b"\n")
            name = f"{seconds}.M{micros}P{os.getpid()}Q{index + 1}.{HOSTNAME},S={len(data)},W={crlf_size}"
        else:
            name = f"{seconds}.M{index}P1Q{index}.bench"  # pop3_bench.py's names
        with open(maildir / "new" / name, "wb") as handle:
            handle.write(data)
    os.sync()


def drop_caches() -> str | None:
    """Drop the page, dentry and inode caches; the reason when that is not possible."""
    if os.geteuid() != 0:
        return "not root"
    os.sync()
    try:
        with open(DROP_CACHES, "w") as handle:
            handle.write("3\n")
    except OSError as error:
        return f"{DROP_CACHES}: {error.strerror}"
    return None


# the gateway


class Gateway:
    """`twistd -n mailgate` on a throw-away configuration; stopped by its pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.config = root / "mailgate.toml"
        self.config.write_text(CONFIG.format(hostname=HOSTNAME, port=self.port))
        (root / "etc").mkdir()
        self.log = root / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def add_user(self, address: str) -> None:
        subprocess.run(
            [str(BIN / "mailgate"), "--config", str(self.config), "user", "add", address, "--password-stdin"],
            input=f"{PASSWORD}\n".encode(), cwd=self.root, check=True, capture_output=True,
        )

    def mailbox(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.root / "var" / "mail" / domain / local

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

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# sessions


def connect(gateway: Gateway, user: str, stls: bool) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", gateway.port, timeout=300)
    if stls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the gateway's self-signed certificate
        client.stls(context=context)
    client.user(user)
    client.pass_(PASSWORD)
    return client


def uidl_session(gateway: Gateway, user: str, expected: int) -> dict[str, float]:
    """login (which lists the Maildir) + STAT + UIDL + QUIT, each timed."""
    start = time.perf_counter()
    client = connect(gateway, user, stls=False)
    logged_in = time.perf_counter()
    count, _ = client.stat()
    _, lines, _ = client.uidl()
    listed = time.perf_counter()
    client.quit()
    end = time.perf_counter()
    if count != expected or len(lines) != expected:
        raise SystemExit(f"expected {expected} messages, STAT said {count}, UIDL listed {len(lines)}")
    return {"login": logged_in - start, "stat_uidl": listed - logged_in, "total": end - start}


def retr_session(gateway: Gateway, count: int, stls: bool) -> dict[str, float]:
    """pop3_bench.py's full session: login, LIST, UIDL, RETR all, DELE all, QUIT."""
    times = {}
    start = time.perf_counter()
    client = connect(gateway, ALICE, stls)
    mark = time.perf_counter()
    times["login"], previous = mark - start, mark
    client.list()
    client.uidl()
    mark = time.perf_counter()
    times["list_uidl"], previous = mark - previous, mark
    octets = 0
    for number in range(1, count + 1):
        octets += client.retr(number)[2]
    mark = time.perf_counter()
    times["retr"], previous = mark - previous, mark
    for number in range(1, count + 1):
        client.dele(number)
    client.quit()
    end = time.perf_counter()
    times["dele_quit"], times["total"] = end - previous, end - start
    times["retr_per_second"] = count / times["retr"]
    left = sum(1 for sub in ("new", "cur") for _ in (gateway.mailbox(ALICE) / sub).iterdir())
    if left:
        raise SystemExit(f"{left} messages left after DELE all + QUIT")
    return times


# figures


def spread(values: list[float], digits: int = 3) -> str:
    """median (min-max), the anchors' format."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def repeat(
    runs: int, session: Callable[[], dict[str, float]], before: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for _ in range(runs):
        before()
        for key, value in session().items():
            results.setdefault(key, []).append(value)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages in the UIDL mailbox")
    parser.add_argument("--size", type=int, default=10_240, help="bytes per message (UIDL mailbox)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--retr-messages", type=int, default=1000)
    parser.add_argument("--retr-size", type=int, default=10_240)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    gateway = Gateway(root)
    try:
        gateway.add_user(ALICE)
        gateway.add_user(BOB)
        gateway.start()
        print(f"# mailgate POP3 bench, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, in {root}\n")
        run_uidl(gateway, args)
        run_retr(gateway, args)
    finally:
        gateway.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def run_uidl(gateway: Gateway, args: argparse.Namespace) -> None:
    cold_problem = drop_caches()
    if cold_problem:
        print(f"cold runs NOT possible ({cold_problem}): the cold rows below ran with warm caches\n")
    gateway.mailbox(BOB).joinpath("new").mkdir(parents=True)
    rows = [("empty mailbox (session + bcrypt check)", "warm",
             repeat(args.runs, lambda: uidl_session(gateway, BOB, 0)))]
    for label, mailgate_names in ((f"{args.messages:,} messages, mailgate names (,S= ,W=)", True),
                                  (f"{args.messages:,} messages, foreign names (no ,S= ,W=)", False)):
        fill(gateway.mailbox(ALICE), args.messages, args.size, mailgate_names)
        session = lambda: uidl_session(gateway, ALICE, args.messages)  # noqa: E731
        rows.append((label, "cold", repeat(args.runs, session, before=lambda: drop_caches())))
        rows.append((label, "warm", repeat(args.runs, session)))
    print(f"## login + STAT + UIDL + QUIT, {args.size} B messages, {args.runs} runs, seconds: median (min–max)\n")
    print("| mailbox | caches | login (lists the Maildir) | STAT + UIDL | whole session |")
    print("|---|---|---|---|---|")
    for label, caches, results in rows:
        cells = [spread(results[key]) for key in ("login", "stat_uidl", "total")]
        print(f"| {label} | {caches} | " + " | ".join(cells) + " |")
    print()


def run_retr(gateway: Gateway, args: argparse.Namespace) -> None:
    count, size = args.retr_messages, args.retr_size
    print(f"## {count} x {size} B: login, LIST + UIDL, RETR all, DELE all + QUIT; {args.runs} runs\n")
    print("| session | login s | LIST+UIDL s | RETR all s | RETR msgs/s | DELE+QUIT s | whole session s |")
    print("|---|---|---|---|---|---|---|")
    for label, stls in (("plain", False), ("STLS", True)):
        results = repeat(args.runs, lambda: retr_session(gateway, count, stls),
                         before=lambda: fill(gateway.mailbox(ALICE), count, size))
        cells = [spread(results["login"]), spread(results["list_uidl"]), spread(results["retr"], 2),
                 spread(results["retr_per_second"], 0), spread(results["dele_quit"]), spread(results["total"], 2)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    main()
