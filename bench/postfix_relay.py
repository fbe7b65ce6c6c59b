"""The Postfix relay anchor: a private Postfix instance relaying to a cell's smtp-sink, beside mailgate.

What /work/shared/bench-anchors/relay_bench.sh does, in the harness, so
that the relay cells measure Postfix in the same invocation as mailgate:
`postfix -c DIR` with its own main.cf and master.cf (the package's
master.cf.dist), queue, data directory and log, all in a temporary
directory of its own; `relayhost = [127.0.0.1]:SINK`, `mynetworks =
127.0.0.0/8`, no chroot, no DNS, Postfix's defaults otherwise; one smtpd on
a free loopback port. The load is the relay cell's (smtp-source to an
address Postfix relays, one connection per message), delivered = the sink
counted N. The system-wide Postfix configuration (/etc/postfix) is neither
read nor changed: every `postfix`/`postconf` call names the private
directory. Stopped by `postfix -c DIR stop`, then its master by pid if it is
still there; the directory is removed afterwards (unless --keep).

The directory is not under the run's scratch directory: Postfix's daemons
run as `mail_owner` and must reach their queue, and the scratch directory
is the harness's (0700, root's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Context, Far, Queued, accepts, cleanup, free_port, log

MASTER_DIST = (Path("/usr/share/postfix/master.cf.dist"), Path("/etc/postfix/master.cf.proto"))
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
syslog_name = postfix-mailgate-bench
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = bench.example.test
mydomain = example.test
myorigin = bench.example.test
mydestination = example.test, bench.example.test, localhost
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
"""


def unavailable(ctx: Context) -> str | None:
    """Why the anchor cannot run here, or None."""
    if ctx.args.no_postfix_relay:
        return "--no-postfix-relay"
    if ctx.args.client == "python":
        return "--client python (no Postfix)"
    if os.geteuid() != 0:
        return "not root (`postfix start` is the superuser's)"
    if not (shutil.which("postfix") and shutil.which("postconf") and ctx.smtp_sink):
        return "postfix, postconf or smtp-sink is not installed"
    if not any(path.exists() for path in MASTER_DIST):
        return "no master.cf.dist to start from"
    return None


def version() -> str:
    done = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


class PostfixRelay:
    """One private Postfix instance relaying everything from 127.0.0.0/8 to [127.0.0.1]:sink_port."""

    def __init__(self, sink_port: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-bench-postfix-"))
        os.chmod(self.root, 0o755)
        self.etc = self.root / "etc"
        self.port = free_port()
        self.master_pid: int | None = None
        self.started = False
        try:
            self._configure(sink_port)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _configure(self, sink_port: int) -> None:
        for sub in ("etc", "queue", "data"):
            (self.root / sub).mkdir()
        (self.etc / "main.cf").write_text(MAIN_CF.format(root=self.root, sink_port=sink_port))
        shutil.copy(next(path for path in MASTER_DIST if path.exists()), self.etc / "master.cf")
        self._postconf("-F", "*/*/chroot = n")
        if self._postconf("-M", "smtp/inet", check=False).stdout.strip():
            self._postconf("-MX", "smtp/inet")
        self._postconf("-M", f"{self.port}/inet={self.port} inet n - n - - smtpd")
        owner = self._postconf("-h", "mail_owner").stdout.strip()
        shutil.chown(self.root / "data", owner, None)
        os.chmod(self.root / "data", 0o700)
        self._postfix("check")

    def _postconf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("postconf", *args, check=check)

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("postfix", *args, check=check)

    def _run(self, tool: str, *args: str, check: bool) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([tool, "-c", str(self.etc), *args], capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise SystemExit(f"{tool} -c {self.etc} {' '.join(args)}: exit {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip()[-1000:]}")
        return done

    @property
    def pid(self) -> int:
        assert self.master_pid is not None
        return self.master_pid

    def start(self) -> None:
        if self.started:
            return
        self._postfix("start")
        self.started = True
        pid_file = self.root / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 30
        while self.master_pid is None or not accepts(self.port):
            if time.monotonic() > deadline:
                raise SystemExit(f"the private Postfix did not start: {self.errors_in_log() or self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                self.master_pid = self.master_pid or int(pid_file.read_text().strip())
            time.sleep(0.05)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        self._postfix("stop", check=False)
        if self.master_pid is None:
            return
        deadline = time.monotonic() + 10
        while _alive(self.master_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(self.master_pid):
            log(f"  private Postfix master {self.master_pid} still up after `postfix stop`: SIGKILL")
            with contextlib.suppress(OSError):
                os.kill(self.master_pid, signal.SIGKILL)

    def queue_left(self) -> int:
        return sum(len(files) for queue in QUEUES for _, _, files in os.walk(self.root / "queue" / queue))

    def process_names(self) -> dict[int, str]:
        return {}  # /proc/PID/comm says it: master, smtpd, cleanup, qmgr, smtp, ...

    def log_tail(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace")[-1000:] if path.exists() else "(no maillog)"

    def errors_in_log(self) -> list[str]:
        path = self.root / "maillog"
        if not path.exists():
            return []
        marks = ("fatal:", "panic:", "error:", "status=deferred", "status=bounced")
        return [line for line in path.read_text(errors="replace").splitlines() if any(m in line for m in marks)][:5]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def anchor(ctx: Context, stack: contextlib.ExitStack, cell: str) -> Queued | None:
    """The Postfix relay anchor of a relay cell (bench.harness.queued_cell), or None (and a note) if it cannot run."""
    why = unavailable(ctx)
    if why:
        log(f"  the Postfix relay anchor is not run: {why}")
        ctx.save({"cell": cell, "group": "workers", "variant": "Postfix relay", "rep": 0, "code": ctx.code,
                  "server": "postfix", "note": f"Postfix relay anchor not run: {why}"})
        return None
    far = Far(ctx, "smtp")
    stack.callback(far.stop)
    try:
        postfix = PostfixRelay(far.port)
        stack.callback(cleanup, ctx, postfix.root)
        stack.callback(postfix.stop)
        postfix.start()
    except SystemExit as problem:  # the mailgate variants of the cell still run
        log(f"  the Postfix relay anchor failed: {problem}")
        ctx.save({"cell": cell, "group": "workers", "variant": "Postfix relay", "rep": 0, "code": ctx.code,
                  "server": "postfix", "note": f"Postfix relay anchor failed: {str(problem)[-1000:]}"})
        return None
    fields: dict[str, Any] = {"server": "postfix", "relay": f"relayhost [127.0.0.1]:{far.port} (private instance)"}
    return Queued(f"Postfix {version()}, relayhost to {far.label} (private instance)", postfix, far, fields)
