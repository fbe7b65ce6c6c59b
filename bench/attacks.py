"""Issue #12's attacks, items 1-10, measured the same way on two revisions (the issue's closing figures).

Not a speed benchmark. Every measurement starts a fresh `twistd -n mailgate`
(bench/harness.py's Gateway, in a temporary directory, loopback only) on a
configuration that uses only keys mailgate 0.1 knows, so the same file runs
both revisions; each revision's `mailgate` package is a `git archive` put
first on PYTHONPATH of the processes started for it (harness.use_code), so
the two copies never meet in one process. Items run in turn, each on
"before" then on "after", so a drift of the (shared) machine falls on both.

    1  16 MB of pipelined `EHLO a` on one connection that never reads: peak VmRSS
       growth of the server, how much it read, whether it closed the connection,
       and a normal session from 127.0.0.2 meanwhile.
    2  `AUTH PLAIN <wrong>` + 2 MB (and 1 MB) of `NOOP` in one write, the attacker
       reading its replies; a normal client (127.0.0.2, greeted before) sends NOOP
       every 50 ms: the longest wait for its reply (stall seconds).
    3  bench/slow_final_reply.py (a simulation; needs today's module layout: its
       "before" is the commit before the fix, c992f96^, whose relay client had
       0.1's one 300 s timeout for every reply).
    4  not measured here: tests (named in the table).
    5  bench/damaged_spool.py, on each revision.
    6  bench/emfile.py, on each revision; `--spin` (Twisted alone against
       mailgate's backoff) on the "after" code.
    7  RLIMIT_NOFILE 300 (soft, set for the child), POP3 connections (400)
       from one address, then from 200 addresses, held open: what they got, and
       whether an SMTP client from 127.0.0.2 still gets its 220 banner.
    8  10 parallel connections from 127.0.0.1 guess a password, each dropping
       its session if no answer came within 0.5 s, for 5 s and at least 100
       guesses: passwords checked per second (the server's failure log lines),
       then the right password from 127.0.0.1 and from 127.0.0.2.
    9  5 wrong POP3 passwords for one account from 127.0.0.1 (in parallel), then
       another user logs in from 127.0.0.1 with the right password.
    10 every TLS 1.2 suite for an RSA key that this OpenSSL knows, offered alone
       after STARTTLS on the SMTP listener: which ones the server accepts.

    PYTHONPATH=. .venv/bin/python -m bench.attacks --before bc4a67d --after HEAD
    PYTHONPATH=. .venv/bin/python -m bench.attacks --code HEAD                 # one revision
    PYTHONPATH=. .venv/bin/python -m bench.attacks --quick --items 1,10       # does it work? (small sizes)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import re
import resource
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

from bench import harness
from bench.harness import PASSWORD, REPO, USER, free_port, log, make_users
from tests.integration.test_dos import (
    flood,
    in_background,
    rss_kb,
    smtp_auth,
    unread_octets,
)

HERE = Path(__file__).resolve().parent
NEIGHBOUR = "2benchuser@example.test"  # made by make_users, with the same password
ITEM3_BEFORE = "c992f96^"  # the commit before "Outbound SMTP: RFC 5321 per-command timeouts"
ITEM4_TESTS = [
    "tests/integration/test_webhook.py::WebhookGatewayTests::test_sync_500_leaves_no_list_copy_behind",
    "tests/integration/test_storage_failure.py::test_a_message_refused_for_a_full_disk_leaves_no_copy_at_any_member",
    "tests/inbound/test_transaction.py::test_a_failing_inline_gateway_leaves_no_copy_anywhere",
]

CONFIG = """\
[server]
hostname = "attacks.example.test"

{listeners}
[domains]
local = ["example.test"]

[users]
file = "etc/users"
{extra}"""
LISTENER = """\
[[listen]]
name = "{name}"
protocol = "{protocol}"
endpoint = "tcp:{port}:interface=127.0.0.1"
tls = "{tls}"

"""
PLAINTEXT_AUTH = '[security]\nplaintext_auth = "always"\n'
NO_RATE = '[limits]\nconnection_rate = "off"\n'


# --- two revisions side by side --------------------------------------------------------


@dataclass
class Code:
    """One revision's `mailgate`, extracted; the users file made with it."""

    label: str  # "before" / "after"
    rev: str
    path: Path  # the directory to put first on PYTHONPATH
    described: str
    scratch: Path
    users_file: Path

    @property
    def ctx(self) -> Any:
        """What harness.Gateway needs of a harness.Context."""
        return SimpleNamespace(scratch=self.scratch, users_file=self.users_file, args=SimpleNamespace(profile=None))


def extract(label: str, rev: str, scratch: Path, users: bool = True) -> Code:
    """harness.use_code, undone afterwards: it sets this process's PYTHONPATH and sys.path for
    the whole run, and here two revisions must coexist, each for its own child processes."""
    scratch.mkdir(parents=True)
    saved_env, saved_path, saved_root = os.environ.get("PYTHONPATH"), list(sys.path), harness.CODE_ROOT
    try:
        described = harness.use_code(rev, scratch)
        path = harness.CODE_ROOT
    finally:
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env
        sys.path[:] = saved_path
        harness.CODE_ROOT = saved_root
    code = Code(label, rev, path, described, scratch, scratch / "users")
    if users:
        with spawning(code):
            make_users(scratch, code.users_file)  # `mailgate user add` of that revision
    return code


@contextlib.contextmanager
def spawning(code: Code, nofile: int | None = None) -> Iterator[None]:
    """Children started within import `mailgate` from `code` (bench/ and tests/ from this checkout),
    and, with `nofile`, run under that soft RLIMIT_NOFILE. harness.Gateway.start spawns twistd with
    this process's environment and limits, so both are set for the length of the call only."""
    saved_env = os.environ.get("PYTHONPATH")
    saved_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(code.path), str(REPO)])
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, saved_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved_limit)
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env


class Server(harness.Gateway):
    """harness.Gateway with this script's configuration: listeners by name, no limits changed
    unless `extra` says so (0.1's keys only)."""

    def __init__(self, code: Code, name: str, listeners: dict[str, tuple[str, str]], extra: str = "") -> None:
        super().__init__(code.ctx, f"{code.label}-{name}")
        self.code = code
        self.ports = {name: (self.port if name == "smtp" else free_port()) for name in listeners}
        self.config.write_text(CONFIG.format(extra=extra, listeners="".join(
            LISTENER.format(name=name, protocol=protocol, tls=tls, port=self.ports[name])
            for name, (protocol, tls) in listeners.items())))

    def run(self, nofile: int | None = None) -> Server:
        with spawning(self.code, nofile):
            self.start()
        deadline = time.monotonic() + 10
        while not all(harness.accepts(port) for port in self.ports.values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.code.label}: a listener of {self.ports} does not accept")
            time.sleep(0.05)
        return self

    def whole_log(self) -> str:
        """twistd rotates its log at 1 MB: twistd.log.N ... .1, then twistd.log."""
        rotated = sorted(self.root.glob("twistd.log.*"), key=lambda path: -int(path.suffix[1:]))
        return "".join(path.read_text(errors="replace") for path in [*rotated, self.log_path] if path.exists())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if not KEEP:
            shutil.rmtree(self.root, ignore_errors=True)


KEEP = False
SMTP_ONLY = {"smtp": ("smtp", "none")}


# --- clients ---------------------------------------------------------------------------


def reply(lines: Any) -> bytes:
    """One SMTP reply, all its lines: the last one."""
    while True:
        line = lines.readline()
        if not line or line[3:4] != b"-":
            return line


def normal_session(port: int, source: str = "127.0.0.2") -> float:
    """EHLO, NOOP, QUIT with smtplib: the seconds it took."""
    import smtplib

    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(source, 0)) as client:
        client.ehlo("normal.test")
        client.noop()
    return time.monotonic() - started


def connection_state(sock: socket.socket) -> str:
    """What became of a connection this side never read from, without reading it."""
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        return f"reset by the server ({errno.errorcode.get(error, error)})"
    try:
        ours, theirs = sock.getsockname()[1], sock.getpeername()[1]
    except OSError:
        return "closed"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (ours, theirs):
            return {"01": "open", "08": "closed by the server (FIN)"}.get(fields[3], f"TCP state {fields[3]}")
    return "gone"


def mb(octets: float) -> str:
    return f"{octets / 1e6:.1f} MB"


# --- the items -------------------------------------------------------------------------

Figures = dict[str, str]


def item1(code: Code, args: argparse.Namespace) -> Figures:
    with Server(code, "reply-flood", SMTP_ONLY) as gateway:
        gateway.run()
        normal_session(gateway.port, "127.0.0.1")  # imports and first-session allocations paid
        time.sleep(0.5)
        before = rss_kb(gateway.pid)
        attacker = socket.create_connection(("127.0.0.1", gateway.port))
        try:
            attacker.setblocking(False)

            def meanwhile() -> float:
                time.sleep(1.0)  # the flood under way
                return normal_session(gateway.port)

            with in_background(meanwhile) as normal:
                started = time.monotonic()
                sent = flood([attacker], b"EHLO a\r\n" * 8192, args.flood, stall_seconds=2.0)[0]
                flooding = time.monotonic() - started
                peak, risen, watched = before, time.monotonic(), time.monotonic()
                while time.monotonic() - watched < args.watch:
                    now_kb = rss_kb(gateway.pid)
                    if now_kb > peak + 1024:  # still growing: watch on
                        risen = time.monotonic()
                    peak = max(peak, now_kb)
                    if time.monotonic() - risen > 3 and ("result" in normal or "error" in normal):
                        break
                    time.sleep(0.1)
                peak = max(peak, rss_kb(gateway.pid))
            read = sent - unread_octets(attacker)
            state = connection_state(attacker)
        finally:
            attacker.close()
    growth = (peak - before) * 1024
    return {
        f"sent by the attacker (until {mb(args.flood)}, or 2 s without progress)": f"{mb(sent)} in {flooding:.1f} s",
        "read by the server": mb(read),
        "server RSS growth (peak VmRSS)": f"**+{mb(growth)}** ({growth / sent:.1f}× what was sent)",
        "the attacker's connection": state,
        "normal session (EHLO, NOOP, QUIT) from 127.0.0.2, 1 s into the flood": outcome_seconds(normal),
    }


def outcome_seconds(outcome: dict[str, object]) -> str:
    if "error" in outcome:
        return f"failed: {outcome['error']!r}"[:120]
    if "result" not in outcome:
        return "no answer"
    return f"{float(outcome['result']):.2f} s"  # type: ignore[arg-type]


def item2(code: Code, args: argparse.Namespace, octets: int) -> Figures:
    with Server(code, "busy-flood", SMTP_ONLY, PLAINTEXT_AUTH) as gateway:
        gateway.run()
        normal = socket.create_connection(("127.0.0.1", gateway.port), timeout=120, source_address=("127.0.0.2", 0))
        attacker = socket.create_connection(("127.0.0.1", gateway.port), timeout=120)
        try:
            heard, said = normal.makefile("rb"), attacker.makefile("rb")
            reply(heard)
            normal.sendall(b"EHLO normal.test\r\n")
            reply(heard)
            reply(said)
            attacker.sendall(b"HELO attacker.test\r\n")
            reply(said)
            noops = octets // 6
            wrong = base64.b64encode(f"\0{USER}\0wrong password".encode())
            payload = b"AUTH PLAIN " + wrong + b"\r\n" + b"NOOP\r\n" * noops

            def attacker_replies() -> tuple[bytes, int, float]:
                first = said.readline()
                answered = sum(1 for _ in range(noops) if said.readline().startswith(b"250 "))
                return first, answered, time.monotonic() - started

            waits: list[float] = []
            started = time.monotonic()
            with in_background(attacker_replies) as replies, in_background(lambda: attacker.sendall(payload)):
                while "result" not in replies and "error" not in replies and time.monotonic() - started < 180:
                    asked = time.monotonic()
                    normal.sendall(b"NOOP\r\n")
                    if not reply(heard).startswith(b"250"):
                        break
                    waits.append(time.monotonic() - asked)
                    time.sleep(0.05)
        finally:
            attacker.close()
            normal.close()
    result: Any = replies.get("result", (b"", 0, 0.0))
    first, answered, took = result
    return {
        f"{mb(octets)}: longest wait of a normal client's NOOP (stall)": f"**{max(waits, default=0):.2f} s**"
                                                                         f" ({len(waits)} NOOPs, every 50 ms)",
        f"{mb(octets)}: the attacker's {noops:,} NOOPs answered": f"{answered:,} after {took:.1f} s "
                                                                  f"(first reply {first[:3].decode() or 'none'})",
    }


def run_script(code: Code, script: str, *argv: str, timeout: float = 120) -> str:
    """One of the single-item scripts in its own process, importing `code`'s mailgate."""
    with spawning(code):
        done = subprocess.run([sys.executable, str(HERE / script), *argv], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, check=False)
    if done.returncode != 0:
        return f"(failed: {(done.stdout + done.stderr).strip().splitlines()[-1:]})"
    return done.stdout


def find(pattern: str, text: str, default: str = "?") -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else default


def item3(code: Code, args: argparse.Namespace) -> Figures:
    """slow_final_reply.py needs today's module layout: "before" runs the commit before the fix."""
    if code.label == "before":
        code = extract("item3-before", args.item3_before, code.scratch.parent / "item3-before", users=False)
    figures = {}
    for delay in ("330", "700"):
        text = run_script(code, "slow_final_reply.py", "--delay", delay)
        copies = find(r"copies received by the MX: (\d+)", text)
        if "queue: empty" in text:
            end = "delivered"
        else:
            end = "still queued: " + find(r"last_error: \S+ \S+ \S+ (.*)", text, text.strip()[-80:])
        figures[f"copies at an MX answering the dot after {delay} s (1 simulated hour)"] = f"**{copies}**, {end}"
    figures["code simulated"] = code.described
    return figures


def item5(code: Code, args: argparse.Namespace) -> Figures:
    text = run_script(code, "damaged_spool.py", "--seconds", str(args.spool_seconds), timeout=args.spool_seconds + 90)
    tracebacks, listed = find(r"tracebacks: (\d+)", text), find(r"listed: (\d+)", text)
    plain, as_json = find(r"queue list: (\d+)", text), find(r"queue list --json: (\d+)", text)
    return {
        f"tracebacks in {args.spool_seconds:g} s (4 damaged env/ files, 1 good)": f"**{tracebacks}**",
        "log lines naming a damaged entry": find(r"naming a damaged entry: (\d+)", text),
        "`queue list` / `--json` exit status, entries listed": f"{plain} / {as_json}, {listed} listed",
        "files moved to corrupt/": find(r"files in corrupt/: (\d+)", text),
    }


def item6(code: Code, args: argparse.Namespace) -> Figures:
    text = run_script(code, "emfile.py", "--nofile", str(args.nofile), "--connections", str(args.connections),
                      "--hold", str(args.hold), timeout=180)
    made = find(r"(\d+) POP3 connections made", text)
    status, took = find(r"queue flush`: exit (\d+)", text), find(r"exit \d+ after ([\d.]+ s)", text)
    figures = {
        f"`mailgate queue flush` after {args.connections} POP3 connections tried under RLIMIT_NOFILE {args.nofile}":
            f"**exit {status}** after {took} ({made} connections made)",
        "tracebacks in the log": find(r"tracebacks in the whole log: (\d+)", text),
        f"log lines while out of descriptors ({args.hold:g} s)": find(r"log lines while out of descriptors: (\d+)", text),
    }
    if code.label == "after":  # the backoff is after-only code; "Twisted alone" is what 0.1 did
        spin = run_script(code, "emfile.py", "--spin", timeout=60)
        alone = find(r"Twisted alone: (\d+ accept attempts, [\d.]+ s)", spin)
        paused = find(r"pause_on_exhaustion: (\d+ accept attempts, [\d.]+ s)", spin)
        figures["`emfile.py --spin` (after's code): accept attempts in 1.5 s, CPU"] = (
            f"Twisted alone (0.1's accept loop): {alone} CPU; with the backoff: {paused} CPU")
    return figures


def item7(code: Code, args: argparse.Namespace, addresses: int) -> Figures:
    listeners = {"smtp": ("smtp", "none"), "pop3": ("pop3", "none")}
    with Server(code, "pop3-flood", listeners, NO_RATE) as gateway:
        gateway.run(nofile=args.nofile)
        socks: list[socket.socket] = []
        kinds: Counter[str] = Counter()
        misses = 0
        try:
            for n in range(args.connections):
                source = "127.0.0.1" if addresses == 1 else f"127.0.1.{1 + n % addresses}"
                try:
                    sock = socket.create_connection(("127.0.0.1", gateway.ports["pop3"]), timeout=2,
                                                    source_address=(source, 0))
                except OSError:
                    kinds["no connection"] += 1
                    misses += 1
                    if misses >= 3:
                        break
                    continue
                socks.append(sock)
                try:
                    line = sock.recv(200)
                except OSError:
                    line = None
                if line is None:
                    kinds["no answer in 2 s"] += 1
                    misses += 1
                    if misses >= 3:
                        break
                    continue
                misses = 0
                kinds["+OK" if line.startswith(b"+OK") else
                      line.decode(errors="replace").strip() or "closed, nothing said"] += 1
            banner = smtp_banner(gateway.port, "127.0.0.2")
        finally:
            for sock in socks:
                sock.close()
    where = "one address" if addresses == 1 else f"{addresses} addresses"
    tried = sum(kinds.values())
    return {
        f"{args.connections} POP3 connections from {where}, RLIMIT_NOFILE {args.nofile}: greeted +OK":
            f"**{kinds['+OK']}** of {tried} tried",
        f"{where}: the others": "; ".join(f"{count} {kind}" for kind, count in kinds.items() if kind != "+OK") or "none",
        f"{where}: then an SMTP client from 127.0.0.2 hears": f"**{banner}**",
    }


def smtp_banner(port: int, source: str) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
            line = sock.recv(200).decode(errors="replace").strip()
            return line[:60] if line else "accepted and closed, empty banner"
    except TimeoutError:
        return "no banner within 5 s"
    except OSError as error:
        return f"{error.strerror or error}"


FAILURE_LINE = re.compile(r"auth failed: ip=127\.0\.0\.1 |127\.0\.0\.1: AUTH failed for")  # after / 0.1


def item8(code: Code, args: argparse.Namespace) -> Figures:
    with Server(code, "guessing", SMTP_ONLY, PLAINTEXT_AUTH + NO_RATE) as gateway:
        gateway.run()
        target: Any = SimpleNamespace(ports={"smtp": gateway.port})  # what smtp_auth reads of a Gateway
        answers: list[str] = []
        started = time.monotonic()

        def guess(worker: int) -> None:
            attempt = 0
            while time.monotonic() - started < 30 and (
                    time.monotonic() - started < args.guess_seconds or len(answers) < args.guesses):
                try:
                    answers.append(smtp_auth(target, USER, f"guess-{worker}-{attempt}", wait_seconds=0.5))
                except OSError as error:
                    answers.append(f"error {error.__class__.__name__}")
                attempt += 1

        guessers = [threading.Thread(target=guess, args=(n,), daemon=True) for n in range(10)]
        for thread in guessers:
            thread.start()
        for thread in guessers:
            thread.join(60)
        window = time.monotonic() - started
        checked = len(FAILURE_LINE.findall(gateway.whole_log()))
        checked_later, settled = checked, time.monotonic()
        while time.monotonic() - settled < 5.0 and time.monotonic() - started < 90:  # checks still under way
            time.sleep(0.2)  # (0.1 checks every password it was sent, bcrypt at cost 12 on a thread)
            now_checked = len(FAILURE_LINE.findall(gateway.whole_log()))
            if now_checked != checked_later:
                checked_later, settled = now_checked, time.monotonic()
        checks_ended = max(settled - started, window)  # from the first guess to the last check, or guess
        right = smtp_auth(target, USER, PASSWORD, wait_seconds=30)
        elsewhere = smtp_auth(target, USER, PASSWORD, source="127.0.0.2", wait_seconds=30)
    kinds = Counter(answer[:3] if answer else "none" for answer in answers)
    return {
        "guesses sent by 10 connections from 127.0.0.1, each giving up after 0.5 s": f"{len(answers)} in {window:.1f} s",
        "their answers": ", ".join(f"{count} × {kind if kind != 'none' else 'none in 0.5 s'}"
                                   for kind, count in kinds.most_common()),
        "passwords checked while guessing (failure log lines)": f"{checked} ({checked / window:.1f}/s)",
        "passwords checked in all, until the last check or guess": f"**{checked_later} of {len(answers)}** in "
                                                                   f"{checks_ended:.1f} s = **{checked_later / checks_ended:.1f}/s**",
        "then the right password from 127.0.0.1": f"**{right[:60] or 'no answer'}**",
        "the right password from 127.0.0.2": elsewhere[:60] or "no answer",
    }


def pop3_login(port: int, user: str, password: str, source: str, wait: float) -> str:
    """USER + PASS on a fresh connection: the first line of the answer to PASS."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=wait, source_address=(source, 0)) as sock:
            lines = sock.makefile("rb")
            lines.readline()
            sock.sendall(f"USER {user}\r\n".encode())
            lines.readline()
            sock.sendall(f"PASS {password}\r\n".encode())
            return lines.readline().decode(errors="replace").strip() or "closed"
    except TimeoutError:
        return "no answer"
    except OSError as error:
        return f"{error.strerror or error}"


def item9(code: Code, args: argparse.Namespace) -> Figures:
    listeners = {"smtp": ("smtp", "none"), "pop3": ("pop3", "none")}
    with Server(code, "pop3-lockout", listeners, PLAINTEXT_AUTH) as gateway:
        gateway.run()
        port = gateway.ports["pop3"]
        wrong: list[str] = []
        threads = [threading.Thread(target=lambda n=n: wrong.append(
            pop3_login(port, NEIGHBOUR, f"wrong-{n}", "127.0.0.1", 20)), daemon=True) for n in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        same_ip = pop3_login(port, USER, PASSWORD, "127.0.0.1", 30)
        other_ip = pop3_login(port, USER, PASSWORD, "127.0.0.2", 30)
    return {
        f"5 wrong passwords for {NEIGHBOUR} from 127.0.0.1: answers": "; ".join(
            f"{count} × {kind}" for kind, count in Counter(line[:80] for line in wrong).items()),
        f"then {USER} from 127.0.0.1, right password": f"**{same_ip[:80]}**",
        f"{USER} from 127.0.0.2, right password": other_ip[:80],
    }


def tls12_suites() -> list[str]:
    """Every TLS 1.2 (and older) suite this OpenSSL knows for an RSA certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:@SECLEVEL=0")
    return [c["name"] for c in context.get_ciphers()
            if c["protocol"] != "TLSv1.3" and c.get("auth") == "auth-rsa"
            and c.get("kea") in ("kx-rsa", "kx-ecdhe", "kx-dhe")]


def starttls_with(port: int, suite: str) -> bool:
    """STARTTLS on the SMTP listener, then a TLS 1.2 handshake offering `suite` alone."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{suite}:@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            def answer() -> bytes:  # unbuffered: nothing of the handshake may be read here
                data = b""
                while not re.search(rb"(^|\n)\d{3} [^\n]*\r\n$", data):
                    chunk = raw.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data
            answer()
            raw.sendall(b"EHLO tls.test\r\n")
            answer()
            raw.sendall(b"STARTTLS\r\n")
            if not answer().startswith(b"220"):
                return False
            with context.wrap_socket(raw) as tls:
                return (tls.cipher() or ("",))[0] == suite
    except (ssl.SSLError, OSError):
        return False


def item10(code: Code, args: argparse.Namespace) -> Figures:
    with Server(code, "tls", {"smtp": ("smtp", "starttls")}, NO_RATE) as gateway:
        gateway.run()
        suites = tls12_suites()
        accepted = [suite for suite in suites if starttls_with(gateway.port, suite)]
    static_rsa = [s for s in accepted if not s.startswith(("ECDHE-", "DHE-"))]
    cbc = [s for s in accepted if "GCM" not in s and "CHACHA20" not in s and "CCM" not in s]
    mark = lambda suite: "**accepted**" if suite in accepted else "refused"
    return {
        f"TLS 1.2 suites accepted after STARTTLS (of {len(suites)} for RSA offered one by one)":
            f"**{len(accepted)}**: " + (", ".join(accepted) or "none"),
        "static RSA (no forward secrecy) accepted": f"{len(static_rsa)}",
        "CBC accepted": f"{len(cbc)}",
        "AES128-GCM-SHA256 (static RSA)": mark("AES128-GCM-SHA256"),
        "AES128-SHA (static RSA, CBC-SHA1)": mark("AES128-SHA"),
        "ECDHE-RSA-AES128-SHA (CBC-SHA1)": mark("ECDHE-RSA-AES128-SHA"),
    }


ITEMS: dict[str, tuple[str, Callable[..., Figures]]] = {
    "1": ("reply amplification (EHLO flood, replies never read)", item1),
    "2": ("quadratic command buffer (AUTH delay + NOOP flood)",
          lambda code, args: {**item2(code, args, args.noop_bytes), **item2(code, args, args.noop_bytes // 2)}),
    "3": ("duplicate relay after a slow final reply", item3),
    "5": ("damaged spool entries", item5),
    "6": ("EMFILE and the CLI request loop", item6),
    "7": ("POP3 connections without a cap",
          lambda code, args: {**item7(code, args, 1), **item7(code, args, 200)}),
    "8": ("SMTP AUTH guessing without waiting for the answer", item8),
    "9": ("POP3 lockout of a shared address", item9),
    "10": ("TLS 1.2 suites", item10),
}


# --- the run -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--before", help="git revision measured as 'before' (e.g. bc4a67d, the last 0.1 commit)")
    parser.add_argument("--after", help="git revision measured as 'after' (e.g. HEAD)")
    parser.add_argument("--code", help="one revision only (its column is 'after')")
    parser.add_argument("--items", default="1,2,3,4,5,6,7,8,9,10", help="comma-separated item numbers")
    parser.add_argument("--quick", action="store_true", help="small sizes and short waits: a check, not figures")
    parser.add_argument("--flood", type=int, help="item 1: octets of `EHLO a` (16,000,000)")
    parser.add_argument("--watch", type=float, help="item 1: seconds at most to watch RSS after the flood (20)")
    parser.add_argument("--noop-bytes", type=int, help="item 2: octets of NOOP, then half as many (2,000,000)")
    parser.add_argument("--nofile", type=int, help="items 6, 7: the server's soft RLIMIT_NOFILE (300)")
    parser.add_argument("--connections", type=int, help="items 6, 7: POP3 connections (400)")
    parser.add_argument("--hold", type=float, help="item 6: seconds the connections are held (5)")
    parser.add_argument("--guess-seconds", type=float, help="item 8: seconds of guessing (5)")
    parser.add_argument("--guesses", type=int, help="item 8: and at least this many guesses (100)")
    parser.add_argument("--spool-seconds", type=float, help="item 5: seconds of twistd on the damaged spool (25)")
    parser.add_argument("--item3-before", default=ITEM3_BEFORE, help="item 3's 'before' code (%(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the gateways' directories")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"flood": 2_000_000 if quick else 16_000_000, "watch": 5.0 if quick else 20.0,
                "noop_bytes": 200_000 if quick else 2_000_000, "nofile": 300, "connections": 100 if quick else 400,
                "hold": 1.0 if quick else 5.0, "guess_seconds": 2.0 if quick else 5.0,
                "guesses": 20 if quick else 100, "spool_seconds": 5.0 if quick else 25.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.code and (args.before or args.after):
        parser.error("--code, or --before/--after")
    if not (args.code or args.after or args.before):
        parser.error("say which code: --before REV --after REV, or --code REV")
    args.items = [item.strip() for item in args.items.split(",") if item.strip()]
    return args


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def main(argv: list[str] | None = None) -> None:
    global KEEP
    args = parse_args(argv)
    KEEP = args.keep
    command = "python -m bench.attacks " + shlex.join(sys.argv[1:] if argv is None else argv)
    revisions = [("after", args.code)] if args.code else [
        (label, rev) for label, rev in (("before", args.before), ("after", args.after)) if rev]
    scratch = Path(tempfile.mkdtemp(prefix="mailgate-attacks-"))
    started, load_before = time.monotonic(), load()
    figures: dict[str, dict[str, Figures]] = {}
    try:
        codes = [extract(label, rev, scratch / label) for label, rev in revisions]
        for code in codes:
            log(f"{code.label}: {code.described}")
        for item in args.items:
            if item == "4":
                continue
            title, measure = ITEMS[item]
            for code in codes:
                log(f"item {item} ({title}) on {code.label}")
                item_started = time.monotonic()
                try:
                    figures.setdefault(item, {})[code.label] = measure(code, args)
                except (SystemExit, Exception) as problem:  # noqa: BLE001 - one broken item must not lose the others
                    figures.setdefault(item, {})[code.label] = {"failed": f"{problem.__class__.__name__}: {problem}"[:300]}
                log(f"  {time.monotonic() - item_started:.0f} s")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    total = time.monotonic() - started
    labels = [code.label for code in codes]
    out = [f"`{command}`", "",
           (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load average "
            f"{load_before} at the start, {load()} at the end; {total:.0f} s in all."), ""]
    out += [f"- {code.label}: {code.described}" for code in codes] + [""]
    out.append("| item | measured | " + " | ".join(labels) + " |")
    out.append("|---|---|" + "---|" * len(labels))
    for item in args.items:
        if item == "4":
            out.append("| 4 | list copies kept when the client hears 4xx: not measured here, covered by "
                       + ", ".join(f"`{test}`" for test in ITEM4_TESTS) + " |" + " – |" * len(labels))
            continue
        rows: list[str] = []
        for by_label in figures.get(item, {}).values():
            rows += [row for row in by_label if row not in rows]
        for row in rows:
            cells = [figures[item].get(label, {}).get(row, "") for label in labels]
            out.append(f"| {item} | {row} | " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
