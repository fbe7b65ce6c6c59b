"""`python -m bench`: mailgate measured the way the anchors were, optionally side by side with them.

Every cell starts `twistd -n mailgate` on a throw-away configuration in a
temporary directory (loopback only, `tls = "none"`, connection limits and
rates off), loads it, and stops it by its pid. Method of
/work/shared/bench-anchors/ (ANCHORS.md, smtp_bench.py): load from Postfix's
`smtp-source` (one new connection per message), N = 2000 for 1 KB and 500
for 100 KB, 3 runs per cell; "accepted" = the load generator exited with
every message answered 250, "delivered" = every file present in
Maildir/new (for the relay and webhook cells: the far end has every
message and var/queue/env is empty); server CPU = utime + stime (+ children)
of the server's process tree from /proc, per message; peak RSS = VmHWM of
the server, one fresh server per cell.

See bench/README.md for the cells and options; raw JSON lines go to
bench/results/<label>-<time>/, a Markdown summary to stdout and (by
default) into a marked block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
HZ = os.sysconf("SC_CLK_TCK")
DEFAULT_ANCHORS = Path("/work/shared/bench-anchors")
RESULTS_MD = HERE / "RESULTS.md"

SENDER = "bench@client.test"
USER = "benchuser@example.test"
RCPT_USERS = [USER] + [f"{i}{USER}" for i in range(2, 11)]  # smtp-source -r 10 names them so
PASSWORD = "bench password"
WEBHOOK_RCPT = "bench@hooks.example.test"
RELAY_RCPT = "bench@relay.example.net"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

CONFIG = """\
[server]
hostname = "bench.example.test"
{server}
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
max_connections_per_ip = 100000
connection_rate = "off"
sender_rate = "off"
{extra}"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- /proc, as smtp_bench.py reads it --------------------------------------


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of one process: the children it reaped count (a restarted
    worker's, Postfix's daemons that exited), the live ones are in the tree themselves."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(x) for x in fields[11:15]) / HZ


def cpu_seconds(root: int) -> float:
    """utime + stime + cutime + cstime over the server's live process tree (master and workers)."""
    return sum(filter(None, (process_cpu_seconds(pid) for pid in process_tree(root))))


def process_peak_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cpu_by_process(root: int) -> dict[int, float]:
    return {pid: cpu for pid in process_tree(root) if (cpu := process_cpu_seconds(pid)) is not None}


def per_process(root: int, cpu0: dict[int, float], n: int, names: dict[int, str]) -> list[dict[str, Any]]:
    """The server's processes after a run, grouped by name (master, worker 0, ...; Postfix's daemon
    names): CPU ms per message since `cpu0` and the largest peak RSS of the group. A process that
    started during the run counts from zero; one reaped during it is in its parent's cutime."""
    groups: dict[str, dict[str, Any]] = {}
    for pid in process_tree(root):
        cpu = process_cpu_seconds(pid)
        if cpu is None:
            continue
        name = names.get(pid) or process_name(pid)
        entry = groups.setdefault(name, {"name": name, "processes": 0, "cpu_s": 0.0, "peak_rss_kb": 0})
        entry["processes"] += 1
        entry["cpu_s"] += cpu - cpu0.get(pid, 0.0)
        entry["peak_rss_kb"] = max(entry["peak_rss_kb"], process_peak_rss_kb(pid) or 0)
    return [{"name": e["name"], "processes": e["processes"], "cpu_ms_per_msg": round(1000 * e["cpu_s"] / n, 3),
             "peak_rss_kb": e["peak_rss_kb"]} for e in groups.values()]


def busy_seconds() -> float:
    """CPU time of the whole machine outside idle, iowait and steal (user nice system irq softirq)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / HZ


CODE_ROOT = REPO  # where the `mailgate` package the gateways import lives; see use_code()


def code_digest() -> str:
    """sha256 of mailgate/**/*.py as the gateways import it: which code a cell ran."""
    digest = hashlib.sha256()
    for path in sorted((CODE_ROOT / "mailgate").rglob("*.py")):
        digest.update(path.relative_to(CODE_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def use_code(which: str, scratch: Path) -> str:
    """Point every gateway (and `mailgate user add`) at a fixed copy of the `mailgate` package.

    Others edit the working tree while a run takes half an hour, so by default
    the run measures a snapshot taken at its start ("snapshot"); "HEAD" or any
    git revision measures that commit (`git archive`, read-only); "worktree"
    imports the live tree. The copy goes first on PYTHONPATH, ahead of the
    editable install's path entry; twistd still finds the drop-in in
    twisted/plugins/ of the checkout, which imports `mailgate.app.tap` from it.
    """
    global CODE_ROOT
    if which == "worktree":
        return f"working tree {REPO}, live"
    code = scratch / "code"
    code.mkdir()
    if which == "snapshot":
        shutil.copytree(REPO / "mailgate", code / "mailgate", ignore=shutil.ignore_patterns("__pycache__"))
        described = "snapshot of the working tree at the start"
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", which, "mailgate"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
        shim_flat_layout(code / "mailgate")
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", which], capture_output=True, text=True,
                             check=False)
        described = f"git revision {which} ({rev.stdout.strip()})"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH", "")]))
    sys.path.insert(0, str(code))
    CODE_ROOT = code
    found = subprocess.run([sys.executable, "-c", "import mailgate; print(mailgate.__file__)"],
                           capture_output=True, text=True, cwd=scratch, check=False).stdout.strip()
    if not found.startswith(str(code)):
        raise SystemExit(f"the gateways would import mailgate from {found}, not from {code}")
    return described


def shim_flat_layout(package: Path) -> None:
    """Let a 0.1 revision (modules flat in mailgate/, before issue 11) run under this checkout's
    entry points: twisted/plugins names `mailgate.app.tap`, the console script `mailgate.cli.main`.
    In the copy only: cli.py becomes the package cli/, and two one-line modules re-export 0.1's
    names. No code on the message path changes."""
    if (package / "app" / "tap.py").exists() or not (package / "tap.py").exists():
        return
    (package / "app").mkdir()
    (package / "app" / "__init__.py").write_text('"""bench shim: 0.1 under the 0.2 drop-in"""\n')
    (package / "app" / "tap.py").write_text("from mailgate.tap import Options, makeService  # noqa: F401\n")
    (package / "cli").mkdir()
    (package / "cli.py").rename(package / "cli" / "__init__.py")
    (package / "cli" / "main.py").write_text("from mailgate.cli import main  # noqa: F401\n")


def steal_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


# --- tools ---------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    for path in (f"/usr/sbin/{name}", f"/usr/lib/postfix/{name}", shutil.which(name) or ""):
        if path and os.access(path, os.X_OK):
            return path
    return None


def install_postfix() -> None:
    """smtp-source and smtp-sink come with Debian's postfix; its daemon is not left running."""
    if os.geteuid() != 0:
        raise SystemExit("smtp-source is missing and installing postfix needs root (or use --client python)")
    log("installing postfix (smtp-source, smtp-sink) from Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], env=env, check=True, stdout=subprocess.DEVNULL)
    if subprocess.run(["postfix", "status"], capture_output=True, check=False).returncode == 0:
        subprocess.run(["postfix", "stop"], capture_output=True, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def resumed_count(log_text: str) -> int:
    """Queued messages the log says were resumed at start: with workers each resumes its own part."""
    return sum(int(count) for count in re.findall(r"queue: resumed (\d+) queued", log_text))


# --- the gateway -----------------------------------------------------------------


class Gateway:
    """`twistd -n mailgate` in its own temporary directory; stopped by its pid."""

    def __init__(self, ctx: Context, name: str, extra: str = "", root: Path | None = None, server: str = "",
                 metrics: bool | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix=f"mailgate-bench-{name}-", dir=ctx.scratch))
        self.port = free_port()
        self.metrics_port: int | None = None
        if metrics if metrics is not None else ctx.args.metrics == "on":
            self.metrics_port = free_port()
            extra += f'\n[metrics]\nendpoint = "tcp:{self.metrics_port}:interface=127.0.0.1"\n'

        self.config = self.root / "mailgate.toml"
        self.config.write_text(CONFIG.format(port=self.port, extra=extra, server=server))
        workers = re.search(r"workers = (\d+)", server)
        self.workers = int(workers.group(1)) if workers else 1
        self.ready = f"workers: all {self.workers} ready" if self.workers > 1 else "mailgate started"
        (self.root / "etc").mkdir(exist_ok=True)
        shutil.copy(ctx.users_file, self.root / "etc" / "users")
        self.log_path = self.root / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.profile: Path | None = None
        if ctx.args.profile:
            ctx.args.profile.mkdir(parents=True, exist_ok=True)
            self.profile = ctx.args.profile / f"{name}-{time.strftime('%H%M%S')}-{self.port}.pstats"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, resumed: int | None = None, deadline: float = 60.0) -> dict[str, float]:
        """Start; the seconds until it accepts connections (and until the queue is resumed)."""
        self.log_path.unlink(missing_ok=True)
        started = time.perf_counter()
        profile = [f"--profile={self.profile}", "--profiler=cprofile", "--savestats"] if self.profile else []
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(self.log_path), *profile,
             "mailgate", "--config", str(self.config)],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        times: dict[str, float] = {}
        end = started + deadline
        while "listening_s" not in times or (resumed and "resumed_s" not in times):
            if self.process.poll() is not None:
                raise SystemExit(f"twistd exited {self.process.returncode}:\n{self.log_text()[-3000:]}")
            if time.perf_counter() > end:
                self.stop()
                raise SystemExit(f"mailgate did not start within {deadline:g} s:\n{self.log_text()[-3000:]}")
            text = self.log_text()
            if "listening_s" not in times and self.ready in text and accepts(self.port):
                times["listening_s"] = time.perf_counter() - started
            if resumed and "resumed_s" not in times and resumed_count(text) >= resumed:
                times["resumed_s"] = time.perf_counter() - started
            time.sleep(0.02)
        return times

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def process_names(self) -> dict[int, str]:
        """pid -> "master", "worker 0", ... (from the master's log), or "mailgate" without workers."""
        if self.workers <= 1:
            return {self.pid: "mailgate"}
        names = {int(pid): f"worker {index}"
                 for index, pid in re.findall(r"workers: worker (\d+) started \(pid (\d+)\)", self.log_text())}
        return {**names, self.pid: "master"}

    def queue_left(self) -> int:
        return count_files(self.queue_env())

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.root / "var" / "mail" / domain / local

    def queue_env(self) -> Path:
        return self.root / "var" / "queue" / "env"

    def errors_in_log(self) -> list[str]:
        return [line for line in self.log_text().splitlines()
                if "Traceback" in line or "Unhandled" in line or "[-] CRITICAL" in line][:5]


def count_files(directory: Path) -> int:
    try:
        with os.scandir(directory) as entries:
            return sum(1 for _ in entries)
    except FileNotFoundError:
        return 0


def clear_maildir(maildir: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        directory = maildir / sub
        if directory.is_dir():
            for entry in os.scandir(directory):
                if entry.is_file():
                    os.unlink(entry.path)


# --- a run's context --------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    scratch: Path
    users_file: Path
    smtp_source: str | None
    smtp_sink: str | None
    records: list[dict] = field(default_factory=list)
    code: str = ""  # code_digest() when the current cell started

    def client_for(self, per_connection: int = 1, pipelining: bool = False, python: bool = False) -> str:
        if python or per_connection != 1 or pipelining or self.args.client == "python" or not self.smtp_source:
            return "python"
        return "smtp-source"

    def load_command(self, port: int, n: int, conc: int, size: int, to: str, rcpts: int = 1,
                     per_connection: int = 1, pipelining: bool = False,
                     python: bool = False, keep_connection: bool = False) -> tuple[str, list[str]]:
        """`smtp-source` where it can do the job, else bench/loadgen.py. keep_connection:
        smtp-source -d, each session sends messages until all N are sent (N/conc each)."""
        if keep_connection:
            if not self.smtp_source:
                raise SystemExit("smtp-source -d needs smtp-source")
            client, per_connection = "smtp-source", 1
        else:
            client = self.client_for(per_connection, pipelining, python)
        if client == "smtp-source":
            command = [self.smtp_source, "-s", str(conc), "-m", str(n), "-l", str(size), "-M", "client.test",
                       "-f", SENDER, "-t", to] + (["-d"] if keep_connection else [])
            if rcpts > 1:
                command += ["-r", str(rcpts)]
            return client, command + [f"127.0.0.1:{port}"]
        command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "-n", str(n), "-c", str(conc),
                   "--size", str(size), "--to", to, "--rcpts", str(rcpts), "--per-connection", str(per_connection),
                   "--sender", SENDER]
        if pipelining:
            command.append("--pipelining")
        return client, command

    def save(self, record: dict) -> None:
        self.records.append(record)
        with open(self.out / "mailgate.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


def measure(ctx: Context, gateway: Any, command: list[str], n: int, progress: Callable[[], int],
            expected: int, done: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """One run: start the load, poll every 20 ms until the client exited and
    `progress()` reached `expected` and `done()` holds (or the timeout).

    `gateway` is a Gateway or another server with a `pid` (the root of its
    process tree) and `process_names()` (bench/postfix_relay.py's Postfix)."""
    os.sync()
    time.sleep(ctx.args.settle)
    waited = wait_for_quiet(ctx)
    procs0, busy0 = cpu_by_process(gateway.pid), busy_seconds()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    accepted = delivered = None
    count = 0
    try:
        while True:
            now = time.perf_counter() - started
            if accepted is None and client.poll() is not None:
                accepted = now
            count = progress()
            if delivered is None and count >= expected and accepted is not None and done():
                delivered = time.perf_counter() - started  # the client exited first: no earlier than accepted
            if accepted is not None and delivered is not None:
                break
            if now > ctx.args.timeout:
                break
            time.sleep(0.02)
    finally:
        if client.poll() is None:
            client.kill()
    out, err = client.communicate()
    cpu = cpu_seconds(gateway.pid) - sum(procs0.values())
    processes = per_process(gateway.pid, procs0, n, gateway.process_names())
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client, reaped by communicate()
    client_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    self1 = resource.getrusage(resource.RUSAGE_SELF)  # this poller
    own = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    wall = time.perf_counter() - started
    other = busy_seconds() - busy0 - cpu - client_cpu - own  # everything else on the machine
    failed = client.returncode != 0 or count < expected or delivered is None
    return {
        "n": n, "expected": expected, "progress": count,
        "accepted_s": round(accepted, 3) if accepted else None,
        "delivered_s": round(delivered, 3) if delivered else None,
        "accepted_msgs_s": round(n / accepted, 1) if accepted and client.returncode == 0 else None,
        "delivered_msgs_s": round(n / delivered, 1) if delivered else None,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_ms_per_msg": round(1000 * cpu / n, 3),
        "peak_rss_kb": max((p["peak_rss_kb"] for p in processes), default=0),
        "peak_rss_kb_sum": sum(p["peak_rss_kb"] for p in processes),
        "server_processes": processes,
        "client_cpu_ms_per_msg": round(1000 * client_cpu / n, 3),
        "other_cpu_percent": round(100 * max(0.0, other) / (wall * (os.cpu_count() or 1)), 1),
        "harness_cpu_ms_per_msg": round(1000 * own / n, 3),
        "waited_for_quiet_s": waited,
        "client_rc": client.returncode,
        "client_err": err.decode(errors="replace")[-300:],
        "client_out": out.decode(errors="replace")[-300:],
        "failed": failed,
    }


def wait_for_quiet(ctx: Context) -> float | None:
    """Wait until the rest of the machine has been quiet for a second: less than
    --quiet % of all CPUs busy (this process sleeps meanwhile, the gateway is
    idle). The machine is shared: other sessions' work is invisible to ps but
    not to /proc/stat. Returns the seconds waited, or None if it never got
    quiet within --quiet-wait (the run goes ahead and says so)."""
    if ctx.args.quiet <= 0:
        return 0.0
    started = time.monotonic()
    cores = os.cpu_count() or 1
    announced = False
    while True:
        busy0, t0 = busy_seconds(), time.monotonic()
        time.sleep(1.0)
        percent = 100 * (busy_seconds() - busy0) / ((time.monotonic() - t0) * cores)
        waited = time.monotonic() - started
        if percent < ctx.args.quiet:
            if announced:
                log(f"  quiet after {waited:.0f} s")
            return round(waited - 1.0, 1)
        if waited > ctx.args.quiet_wait:
            log(f"  still {percent:.0f} % busy after {waited:.0f} s: running anyway")
            return None
        if not announced:
            log(f"  the machine is {percent:.0f} % busy with other work: waiting (up to {ctx.args.quiet_wait:g} s)")
            announced = True


def record(ctx: Context, cell: str, group: str, variant: str, rep: int, result: dict, **extra: Any) -> None:
    rec = {"cell": cell, "group": group, "variant": variant, "rep": rep, "code": ctx.code, **extra, **result}
    ctx.save(rec)
    shown = rec.get("delivered_msgs_s") or rec.get("value")
    log(f"  {cell} [{variant}] run {rep}: {shown} "
        + (f"msgs/s, CPU {rec['server_cpu_ms_per_msg']:.2f} ms/msg" if "server_cpu_ms_per_msg" in rec else "")
        + (" FAILED " + (rec.get("client_err") or rec.get("client_out") or "").strip()[-200:] if rec.get("failed") else ""))


# --- the cells ---------------------------------------------------------------------


def size_label(size: int) -> str:
    return f"{size // 1024} KB"


def maildir_cell(ctx: Context, cell: str, group: str, variant: str, size: int, conc: int, n: int,
                 rcpts: int = 1, per_connection: int = 1, pipelining: bool = False, python: bool = False,
                 keep_connection: bool = False, server: str = "") -> None:
    """N messages into local Maildirs: fresh gateway, `reps` runs, files counted in new/."""
    gateway = Gateway(ctx, cell, server=server)
    addresses = RCPT_USERS[:rcpts]
    client, command = ctx.load_command(gateway.port, n, conc, size, USER, rcpts, per_connection, pipelining, python,
                                       keep_connection)
    try:
        gateway.start()
        for rep in range(1, ctx.args.reps + 1):
            for address in addresses:
                clear_maildir(gateway.maildir(address))
            news = [gateway.maildir(address) / "new" for address in addresses]
            result = measure(ctx, gateway, command, n, lambda news=news: sum(count_files(d) for d in news), n * rcpts)
            record(ctx, cell, group, variant, rep, result, client=client, size=size, conc=conc, rcpts=rcpts,
                   per_connection=per_connection, pipelining=pipelining, command=shlex.join(command))
    finally:
        gateway.stop()
        cleanup(ctx, gateway.root)


def cleanup(ctx: Context, root: Path) -> None:
    if not ctx.args.keep:
        shutil.rmtree(root, ignore_errors=True)


def smtp_cell(size: int, conc: int) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        n = ctx.args.n1k if size == 1024 else ctx.args.n100k
        if ctx.args.metrics == "both":
            metrics_pair_cell(ctx, f"smtp-{size // 1024}k-c{conc}", size, conc, n)
        else:
            maildir_cell(ctx, f"smtp-{size // 1024}k-c{conc}", "smtp", "mailgate", size, conc, n)
    return run


METRICS_ON = "mailgate, metrics on"


def metrics_pair_cell(ctx: Context, cell: str, size: int, conc: int, n: int) -> None:
    """`--metrics both`: the cell with `[metrics] endpoint` off and on, side by side.

    Two gateways run the whole time; their runs alternate ABBA (off, on; on,
    off; ...) so that the machine's drift between states hits both alike.
    After each metrics-on run /metrics is read once, to show the counting
    happened (`metrics_received`: mailgate_messages_received_total).
    Metrics-off runs are the plain cell (group smtp); metrics-on runs are
    group "metrics", so the anchors' tables keep comparing the plain one.
    """
    gateways = {"off": Gateway(ctx, cell, metrics=False), "on": Gateway(ctx, cell + "-metrics", metrics=True)}
    commands = {which: ctx.load_command(gateway.port, n, conc, size, USER) for which, gateway in gateways.items()}
    try:
        for gateway in gateways.values():
            gateway.start()
        for rep in range(1, ctx.args.reps + 1):
            for which in (("off", "on") if rep % 2 else ("on", "off")):
                gateway, (client, command) = gateways[which], commands[which]
                clear_maildir(gateway.maildir(USER))
                new = gateway.maildir(USER) / "new"
                result = measure(ctx, gateway, command, n, lambda new=new: count_files(new), n)
                extra = {"metrics_received": received_counter(gateway)} if which == "on" else {}
                record(ctx, cell, "smtp" if which == "off" else "metrics", "mailgate" if which == "off" else METRICS_ON,
                       rep, result, client=client, size=size, conc=conc, rcpts=1, per_connection=1, pipelining=False,
                       command=shlex.join(command), **extra)
    finally:
        for gateway in gateways.values():
            gateway.stop()
            cleanup(ctx, gateway.root)


def received_counter(gateway: Gateway) -> float | None:
    """mailgate_messages_received_total from the gateway's /metrics, or None if it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = re.findall(r'^mailgate_messages_received_total\{listener="smtp"\} (\S+)$', text, re.MULTILINE)
    return float(found[0]) if found else None


def pipelining_cell(conc: int) -> Callable[[Context], None]:
    """The same client three ways, so only the session pattern differs."""
    def run(ctx: Context) -> None:
        cell = f"pipelining-1k-c{conc}"
        for variant, per_connection, pipelining in (("python client, 1 msg/connection", 1, False),
                                                    ("python client, 10 msgs/connection", 10, False),
                                                    ("python client, 10 msgs/connection, pipelined", 10, True)):
            maildir_cell(ctx, cell, "pipelining", variant, 1024, conc, ctx.args.n1k,
                         per_connection=per_connection, pipelining=pipelining, python=True)
        if ctx.smtp_source and ctx.args.client != "python":
            maildir_cell(ctx, cell, "pipelining", f"smtp-source -d, {ctx.args.n1k // conc} msgs/connection, "
                         "not pipelined", 1024, conc, ctx.args.n1k, keep_connection=True)
    return run


def multircpt_cell(conc: int) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        maildir_cell(ctx, f"rcpt10-1k-c{conc}", "multircpt", "10 local recipients", 1024, conc,
                     max(1, ctx.args.n1k // 2), rcpts=10)
    return run


def queue_drained(gateway: Gateway) -> Callable[[], bool]:
    return lambda: count_files(gateway.queue_env()) == 0


class Far:
    """A far end in its own process (smtp-sink, or receivers.py), with a message counter."""

    def __init__(self, ctx: Context, kind: str) -> None:
        self.port = free_port()
        self.kind = kind
        self.output = Path(tempfile.mkstemp(prefix=f"bench-{kind}-", dir=ctx.scratch)[1])
        if kind == "smtp" and ctx.smtp_sink and ctx.args.client != "python":
            self.label = "smtp-sink"
            command = [ctx.smtp_sink, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "256"]
            if os.geteuid() != 0:
                command = [ctx.smtp_sink, "-c", f"127.0.0.1:{self.port}", "256"]
        else:
            self.label = "receivers.py " + kind
            command = [sys.executable, str(HERE / "receivers.py"), kind, "--port", str(self.port)]
        self.handle = open(self.output, "wb")  # noqa: SIM115 (the far end's stdout until stop())
        self.process = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.label} did not start")
            time.sleep(0.05)

    def count(self) -> int:
        if self.kind == "http":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/count", timeout=5) as response:
                    return int(response.read())
            except OSError:
                return 0
        found = re.findall(rb"mesg=(\d+)", self.output.read_bytes()[-200:])
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()
        self.output.unlink(missing_ok=True)


def interleaved(variants: list[Any], reps: int) -> list[tuple[int, Any]]:
    """(rep, variant) in the order to run: A B C, then C B A, ...: on a machine that drifts between
    fast and slow, no variant gets all the early (or late) runs, so the difference is the variant's."""
    order: list[tuple[int, Any]] = []
    for rep in range(1, reps + 1):
        order += [(rep, variant) for variant in (variants if rep % 2 else variants[::-1])]
    return order


@dataclass
class Queued:
    """One server of a queued cell, with its own far end: a Gateway, or the Postfix relay anchor."""
    variant: str
    server: Any  # .pid, .port, .start(), .stop(), .queue_left(), .process_names(), .errors_in_log()
    far: Far
    fields: dict[str, Any]  # recorded with each of its runs (workers, server)


def far_config(kind: str, far: Far) -> tuple[str, str]:
    """The gateway configuration that sends to `far`, and the variant's name."""
    if kind == "smtp":
        return (f'\n[relay]\nallowed_networks = ["127.0.0.0/8"]\nsmarthost = "127.0.0.1:{far.port}"\n',
                f"relay to {far.label}")
    return ("\n[[webhook]]\nname = \"bench\"\nmatch = [\"*@hooks.example.test\"]\n"
            f"url = \"http://127.0.0.1:{far.port}/inbound\"\nsecret = \"{WEBHOOK_SECRET}\"\n"
            "format = \"json\"\nmode = \"queued\"\n",
            "webhook (queued, json, signed) to a 204 receiver")


def queued_gateway(ctx: Context, stack: contextlib.ExitStack, cell: str, kind: str,
                   workers: int | None = None) -> Queued:
    """A gateway sending to a far end of its own, both stopped (and removed) when `stack` closes."""
    far = Far(ctx, kind)
    stack.callback(far.stop)
    extra, variant = far_config(kind, far)
    server = f"workers = {workers}\n" if workers else ""
    gateway = Gateway(ctx, cell, extra, server=server)
    stack.callback(cleanup, ctx, gateway.root)
    stack.callback(gateway.stop)
    fields: dict[str, Any] = {"server": "mailgate"}
    if workers:
        variant, fields["workers"] = f"mailgate, workers = {workers}", workers
    return Queued(variant, gateway, far, fields)


def queued_cell(ctx: Context, cell: str, group: str, kind: str, conc: int, size: int = 1024,
                workers: Iterable[int | None] = (None,), anchors: Iterable[Callable[..., Queued | None]] = ()) -> None:
    """Accept into the queue, deliver to a far end; delivered = the far end has all, the queue empty.

    One gateway per `workers` value (None: the key unset) and one server per
    anchor (bench/postfix_relay.py), each with its own far end, all started
    before the first run; the runs take turns (A B C, C B A, ...).
    """
    n = ctx.args.n1k if size == 1024 else ctx.args.n100k
    to = RELAY_RCPT if kind == "smtp" else WEBHOOK_RCPT
    with contextlib.ExitStack() as stack:
        servers = [queued_gateway(ctx, stack, cell, kind, w) for w in workers]
        servers += [s for make in anchors if (s := make(ctx, stack, cell)) is not None]
        for queued in servers:
            queued.server.start()
        for rep, queued in interleaved(servers, ctx.args.reps):
            server, far = queued.server, queued.far
            client, command = ctx.load_command(server.port, n, conc, size, to)
            base, far_cpu = far.count(), cpu_seconds(far.process.pid)
            result = measure(ctx, server, command, n, lambda base=base, far=far: far.count() - base, n,
                             lambda server=server: server.queue_left() == 0)
            result["queue_left"] = server.queue_left()
            result["far_cpu_ms_per_msg"] = round(1000 * (cpu_seconds(far.process.pid) - far_cpu) / n, 3)
            record(ctx, cell, group, queued.variant, rep, result, client=client, size=size, conc=conc,
                   command=shlex.join(command), log_errors=server.errors_in_log(), **queued.fields)


def relay_cell(conc: int) -> Callable[[Context], None]:
    return lambda ctx: queued_cell(ctx, f"relay-1k-c{conc}", "relay", "smtp", conc)


def webhook_cell(conc: int) -> Callable[[Context], None]:
    return lambda ctx: queued_cell(ctx, f"webhook-1k-c{conc}", "webhook", "http", conc)


# the 100,000-message queue


def fill_queue(root: Path, count: int) -> None:
    """`count` deferred entries in mailgate.outbound.spool's on-disk format (its own dataclasses
    write the JSON), next attempt 30 days away; one sync at the end, not an fsync per file."""
    sys.path.insert(0, str(REPO))
    from mailgate.outbound.spool import QueuedMessage, RecipientState

    queue = root / "var" / "queue"
    for sub in ("msg", "env", "tmp", "control"):
        (queue / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    now = time.time()
    body = b"Received: from client.test by bench.example.test; bench\nFrom: <bench@client.test>\n" \
           b"Subject: deferred\n\n" + (b"x" * 76 + b"\n") * 13
    for index in range(count):
        queue_id = f"BENCHQ{index:07d}"
        entry = QueuedMessage(
            id=queue_id, sender=SENDER, arrived=now, attempts=1, next_attempt=now + 30 * 86400,
            last_error="451 4.4.1 bench: deferred",
            recipients=[RecipientState(f"deferred{index}@remote.example.net", "mx", code=451, enhanced="4.4.1",
                                       diagnostic="bench: deferred")],
        )
        for sub, data in (("msg", body), ("env", entry.to_json())):
            fd = os.open(queue / sub / queue_id, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data)
            if sub == "env":
                os.utime(fd, (entry.next_attempt, entry.next_attempt))  # the spool dates retries so
            os.close(fd)
    os.sync()


def queue_cell(ctx: Context, cell: str = "queue-1k-c10", group: str = "queue", workers: int | None = None) -> None:
    """1 KB c=10 accept rate with an empty queue and with `queue_size` deferred entries,
    a fresh gateway for every run, in the order empty-full, full-empty, empty-full, ...;
    also the start-up time of each. `workers`: server.workers of both (unset if None)."""
    count, n, conc = ctx.args.queue_size, ctx.args.n1k, 10
    server, suffix = (f"workers = {workers}\n", f", workers = {workers}") if workers else ("", "")
    fields = {"workers": workers} if workers else {}
    full = Gateway(ctx, cell + "-full", server=server)
    log(f"  writing {count:,} deferred queue entries")
    t0 = time.perf_counter()
    fill_queue(full.root, count)
    log(f"  written in {time.perf_counter() - t0:.1f} s")
    empties: list[Gateway] = []
    try:
        for rep in range(1, ctx.args.reps + 1):
            empties.append(Gateway(ctx, cell + "-empty", server=server))
            pair = [("empty queue" + suffix, empties[-1]), (f"{count:,} deferred" + suffix, full)]
            # ABBA: the machine drifts between fast and slow states; alternating the order
            # keeps a drift from always falling on the same variant.
            for variant, gateway in (pair if rep % 2 else pair[::-1]):
                client, command = ctx.load_command(gateway.port, n, conc, 1024, USER)
                try:
                    times = gateway.start(resumed=count if gateway is full else None, deadline=900)
                    time.sleep(ctx.args.queue_settle)
                    # Nothing is deleted until the cell ends: on this file system (ext4
                    # without a journal) freed inodes are skipped as "recently deleted"
                    # by every new file for up to 5 minutes, and each later run would
                    # pay for the earlier runs' deletions.
                    new = gateway.maildir(USER) / "new"
                    before = count_files(new)
                    result = measure(ctx, gateway, command, n, lambda new=new, b=before: count_files(new) - b, n)
                    result.update({k: round(v, 3) for k, v in times.items()})
                    result["queued_after"] = count_files(gateway.queue_env())
                    record(ctx, cell, group, variant, rep, result, client=client, size=1024, conc=conc,
                           queue_size=count if gateway is full else 0, command=shlex.join(command), **fields)
                finally:
                    gateway.stop()
    finally:
        for gateway in [*empties, full]:
            cleanup(ctx, gateway.root)


# POP3 and idle sessions: the other engineers' scripts, reused


@contextlib.contextmanager
def pop3_gateway(ctx: Context, name: str) -> Iterator[Any]:
    """pop3_uidl.py's gateway with its user, in a scratch directory removed afterwards."""
    from bench import pop3_uidl

    root = Path(tempfile.mkdtemp(prefix=f"mailgate-bench-{name}-", dir=ctx.scratch))
    gateway = pop3_uidl.Gateway(root)
    try:
        gateway.add_user(pop3_uidl.ALICE)
        gateway.start()
        yield gateway
    finally:
        gateway.stop()
        cleanup(ctx, root)


def pop3_retr_cell(ctx: Context) -> None:
    from bench import pop3_uidl

    count = ctx.args.retr_messages
    with pop3_gateway(ctx, "pop3") as gateway:
        for rep in range(1, ctx.args.reps + 1):
            pop3_uidl.fill(gateway.mailbox(pop3_uidl.ALICE), count, 10_240)
            time.sleep(ctx.args.settle)
            cpu0 = cpu_seconds(gateway.process.pid)
            times = pop3_uidl.retr_session(gateway, count, stls=False)
            cpu = cpu_seconds(gateway.process.pid) - cpu0
            record(ctx, "pop3-retr", "pop3", f"{count} x 10 KB, no TLS", rep,
                   {"value": round(times["retr_per_second"], 1), "unit": "RETR msgs/s",
                    **{k: round(v, 4) for k, v in times.items()},
                    "server_cpu_ms_per_retr": round(1000 * cpu / count, 3)})


def pop3_uidl_cell(ctx: Context) -> None:
    from bench import pop3_uidl

    count = ctx.args.uidl_messages
    with pop3_gateway(ctx, "uidl") as gateway:
        pop3_uidl.fill(gateway.mailbox(pop3_uidl.ALICE), count, 10_240, mailgate_names=True)
        problem = pop3_uidl.drop_caches()
        for phase in ("cold", "warm"):
            if phase == "warm":
                pop3_uidl.uidl_session(gateway, pop3_uidl.ALICE, count)  # the page cache and the auth cache
            for rep in range(1, ctx.args.reps + 1):
                if phase == "cold":
                    problem = pop3_uidl.drop_caches()
                times = pop3_uidl.uidl_session(gateway, pop3_uidl.ALICE, count)
                record(ctx, "pop3-uidl", "pop3", f"{count:,} msgs, {phase}", rep,
                       {"value": round(times["total"], 4), "unit": "s login+STAT+UIDL+QUIT",
                        **{k: round(v, 4) for k, v in times.items()},
                        "caches_not_dropped": problem if phase == "cold" else None})


SPREAD = re.compile(r"([\d.]+) \(([\d.]+)–([\d.]+)\)")


def idle_cell(ctx: Context) -> None:
    script = HERE / "idle_sessions.py"
    if not script.exists():
        ctx.save({"cell": "idle", "group": "idle", "variant": "missing", "rep": 0,
                  "note": "bench/idle_sessions.py is not in the tree: not measured"})
        log("  bench/idle_sessions.py missing: not measured")
        return
    command = [sys.executable, str(script), "--sessions", str(ctx.args.idle_sessions), "--runs", str(ctx.args.reps)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800, check=False)
    rows = [line for line in done.stdout.splitlines() if line.startswith("|") and SPREAD.search(line)]
    rec: dict[str, Any] = {"cell": "idle", "group": "idle", "variant": f"{ctx.args.idle_sessions} sessions",
                           "rep": 0, "command": shlex.join(command), "rc": done.returncode,
                           "output": done.stdout[-3000:], "stderr": done.stderr[-1000:]}
    if rows:
        cells = [SPREAD.search(c) for c in rows[0].strip("|").split("|")]
        names = ["before_mb", "idle_mb", "kb_per_session", "after_mb", "kept_kb_per_session"]
        for name, found in zip(names, cells):
            if found:
                rec[name] = [float(x) for x in found.groups()]  # median, min, max
    ctx.save(rec)
    log(f"  idle: {rec.get('kb_per_session', ['?'])[0]} KB per idle session (rc {done.returncode})")


# --- the anchors -------------------------------------------------------------------


def run_anchors(ctx: Context) -> None:
    """anchors.sh with this run's sizes; its RES is the run's anchors/ directory.

    The install step runs on its own first: anchors.sh creates Postfix's
    Maildir with `mkdir -p` as root just before its first run, and on a
    machine where `local(8)` (running as benchuser) finds it root-owned and
    empty, every delivery bounces ("create maildir file ...: Permission
    denied") and each Postfix run waits out smtp_bench.py's 180 s timeout.
    So the Maildir is made benchuser's between `install` and the rest.
    """
    script = ctx.args.anchors_dir / "anchors.sh"
    res = ctx.out / "anchors"
    res.mkdir(exist_ok=True)
    bench_dir = Path(os.environ.get("BENCH_DIR", "/tmp/mailgate-anchors"))
    env = dict(os.environ, RES=str(res), REPS=str(ctx.args.reps), N1K=str(ctx.args.n1k),
               N100K=str(ctx.args.n100k), CONCS=" ".join(map(str, ctx.args.concs)),
               NPOP=str(ctx.args.retr_messages), NSCALE=str(ctx.args.uidl_messages), BENCH_DIR=str(bench_dir))
    env.pop("PYTHONPATH", None)  # the mailgate snapshot is ours, not the anchors'
    if ctx.args.anchor_servers:
        env["SERVERS"] = ctx.args.anchor_servers
    steps = ctx.args.anchor_steps.split()
    groups = [["install"], [s for s in steps if s != "install"]] if "install" in steps else [steps]
    shown = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("REPS", "N1K", "N100K", "CONCS", "NPOP", "NSCALE"))
    codes = []
    with open(res / "anchors.log", "ab") as handle:
        for part in groups:
            if not part:
                continue
            if part[0] != "install":
                own_postfix_maildir(bench_dir)
            command = ["bash", str(script), *part]
            log(f"anchors: {shown} {shlex.join(command)}")
            done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=res, check=False)
            codes.append(done.returncode)
    log(f"anchors: exit {codes}, results in {res}")
    meta = json.loads((ctx.out / "meta.json").read_text())
    meta["anchors"] = {"command": f"RES={res} {shown} " + " ; ".join(
        shlex.join(["bash", str(script), *part]) for part in groups if part),
        "rc": codes, "finished": utc_now()}
    (ctx.out / "meta.json").write_text(json.dumps(meta, indent=1))


def own_postfix_maildir(bench_dir: Path) -> None:
    """Maildir/{tmp,new,cur} of anchors.sh's benchuser, owned by benchuser (see run_anchors)."""
    import pwd

    try:
        user = pwd.getpwnam("benchuser")
    except KeyError:
        return
    maildir = bench_dir / "home" / "benchuser" / "Maildir"
    for path in (maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, user.pw_uid, user.pw_gid)


# --- selection and main ----------------------------------------------------------------


def all_cells(concs: Iterable[int]) -> list[tuple[str, str, Callable[[Context], None]]]:
    concs = list(concs)
    cells = [(f"smtp-{size // 1024}k-c{c}", "smtp", smtp_cell(size, c)) for size in (1024, 102400) for c in concs]
    cells += [(f"pipelining-1k-c{c}", "pipelining", pipelining_cell(c)) for c in concs if c > 1]
    cells += [(f"rcpt10-1k-c{c}", "multircpt", multircpt_cell(c)) for c in concs if c > 1]
    cells += [(f"relay-1k-c{c}", "relay", relay_cell(c)) for c in concs if c > 1]
    cells += [(f"webhook-1k-c{c}", "webhook", webhook_cell(c)) for c in concs if c > 1]
    from bench import mailauth, scaling  # their cells build on this module's pieces

    cells += scaling.cells(concs)
    cells += [("pop3-retr", "pop3", pop3_retr_cell), ("pop3-uidl", "pop3", pop3_uidl_cell),
              ("idle", "idle", idle_cell), ("queue-1k-c10", "queue", queue_cell)]
    return cells + mailauth.cells()


def select(cells: list, patterns: list[str]) -> list:
    if not patterns:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatch(c[0], p) or fnmatch.fnmatch(c[0], p + "-*") or c[1] == p
                                      for p in patterns)]
    if not chosen:
        raise SystemExit(f"no cell matches {patterns}; cells: {', '.join(c[0] for c in cells)}")
    return chosen


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def machine() -> dict[str, str]:
    def first(path: str, prefix: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def run(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout.rstrip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    try:
        import twisted
        twisted_version = twisted.__version__
    except ImportError:
        twisted_version = "?"
    dirty = run("git", "-C", str(REPO), "--no-optional-locks", "status", "--porcelain", "--", "mailgate")
    postfix = run("dpkg-query", "-W", "-f", "${Version}", "postfix")
    return {
        "cpu": first("/proc/cpuinfo", "model name"), "cores": str(os.cpu_count()),
        "memory": first("/proc/meminfo", "MemTotal"), "kernel": platform.release(),
        "debian": Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?",
        "fs": run("findmnt", "-no", "FSTYPE,OPTIONS", "-T", tempfile.gettempdir()),
        "python": platform.python_version(), "twisted": twisted_version,
        "postfix (smtp-source)": postfix or "not installed",
        "commit": run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "mailgate_dirty": ", ".join(line[3:] for line in dirty.splitlines()) or "clean",
        "mailgate_sha256": code_digest(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cells", default="", help="comma-separated cell names, groups (smtp, pipelining, "
                        "multircpt, relay, webhook, workers, pop3, idle, queue, mailauth) or globs ('smtp-1k-*', "
                        "'workers-relay-*'); default all")
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    parser.add_argument("--quick", action="store_true", help="tiny N and 1 run per cell: a check, not a figure")
    parser.add_argument("--reps", type=int, help="runs per cell (3)")
    parser.add_argument("--n1k", type=int, help="messages per 1 KB run (2000)")
    parser.add_argument("--n100k", type=int, help="messages per 100 KB run (500)")
    parser.add_argument("--concs", help="concurrencies, e.g. '1 10 50' (default) or '1,10,50'")
    parser.add_argument("--client", choices=["auto", "smtp-source", "python"], default="auto",
                        help="load for one-message-per-connection cells: smtp-source (installed with postfix "
                        "if missing, as root), or bench/loadgen.py; auto = smtp-source if installed")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install postfix")
    parser.add_argument("--queue-size", type=int, help="deferred entries for the queue cells (100000)")
    parser.add_argument("--no-postfix-relay", action="store_true", help="workers-relay-* cells: do not run the "
                        "Postfix relay anchor (bench/postfix_relay.py; it needs root and Postfix, and is skipped "
                        "with --client python)")
    parser.add_argument("--queue-settle", type=float, default=0.0, help="queue cell: seconds to wait after start-up "
                        "(after the queue is resumed) before loading; default 0")
    parser.add_argument("--idle-sessions", type=int, help="sessions for idle_sessions.py (1000)")
    parser.add_argument("--uidl-messages", type=int, help="messages for login+UIDL (20000)")
    parser.add_argument("--retr-messages", type=int, help="messages for RETR all (1000)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run before it counts as failed")
    parser.add_argument("--settle", type=float, help="seconds of quiet after sync before each run (1.0)")
    parser.add_argument("--quiet", type=float, default=15.0, help="before each run, wait until other work uses "
                        "less than this %% of all CPUs (0: do not wait); default 15")
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="wait at most this long (s), then run anyway")
    parser.add_argument("--anchors", action="store_true", help="also run anchors.sh in the same invocation "
                        "(after the mailgate cells) and take the ratios from that run")
    parser.add_argument("--anchors-only", action="store_true", help="run only the anchors (then summarise)")
    parser.add_argument("--anchors-dir", type=Path, default=DEFAULT_ANCHORS)
    parser.add_argument("--anchor-steps", default="install limits smtp pop3 summary", help="anchors.sh steps")
    parser.add_argument("--anchor-servers", default="", help="SERVERS= for anchors.sh (a subset), default all")
    parser.add_argument("--anchors-results", type=Path, help="take the anchors from this earlier RES directory")
    parser.add_argument("--label", default="run", help="names the results directory and the RESULTS.md block")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/LABEL-TIME)")
    parser.add_argument("--results", type=Path, default=RESULTS_MD,
                        help="Markdown file whose block for LABEL is replaced (added if absent)")
    parser.add_argument("--no-results", action="store_true", help="do not touch the RESULTS file")
    parser.add_argument("--summarize", type=Path, metavar="DIR", help="only re-summarise an earlier results dir")
    parser.add_argument("--keep", action="store_true", help="keep the gateways' temporary directories")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="run each gateway under cProfile "
                        "(twistd --profile --savestats): DIR/CELL-TIME-PORT.pstats, written when it stops; "
                        "the figures are then slower than without")
    parser.add_argument("--metrics", choices=["off", "on", "both"], default="off",
                        help="[metrics] endpoint of the gateways: off (default), on for every cell, or both: the "
                        "smtp cells run with it off and on, side by side, runs alternated (see RESULTS.md)")
    parser.add_argument("--code", default="snapshot", help="which mailgate to run: snapshot (of the working tree "
                        "at the start, default), worktree (live: changes mid-run show up), or a git revision (HEAD)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"reps": 1 if quick else 3, "n1k": 100 if quick else 2000, "n100k": 30 if quick else 500,
                "concs": "1 10" if quick else "1 10 50", "queue_size": 2000 if quick else 100_000,
                "idle_sessions": 100 if quick else 1000, "uidl_messages": 2000 if quick else 20_000,
                "retr_messages": 200 if quick else 1000, "settle": 0.2 if quick else 1.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.concs = [int(c) for c in str(args.concs).replace(",", " ").split()]
    return args


def main(argv: list[str] | None = None) -> None:
    from bench.report import summarize, write_results

    args = parse_args(argv)
    if args.summarize:
        text = summarize(args.summarize)
        sys.stdout.write(text)
        if not args.no_results:
            write_results(args.results, args.label, text)
        return
    cells = select(all_cells(args.concs), [p.strip() for p in args.cells.split(",") if p.strip()])
    if args.list:
        for name, group, _ in all_cells(args.concs):
            print(f"{name:24} {group}")
        return
    if args.anchors_only:
        cells = []

    smtp_source, smtp_sink = find_tool("smtp-source"), find_tool("smtp-sink")
    wants_postfix = args.client != "python" or args.anchors or args.anchors_only
    if not smtp_source and wants_postfix and not args.no_install:
        install_postfix()
        smtp_source, smtp_sink = find_tool("smtp-source"), find_tool("smtp-sink")
    if args.client == "smtp-source" and not smtp_source:
        raise SystemExit("smtp-source not found (apt-get install postfix)")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "results" / f"{args.label}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    signal.signal(signal.SIGTERM, _interrupt)  # stop the gateways (finally blocks) on kill / Ctrl-C
    signal.signal(signal.SIGINT, _interrupt)
    code = use_code(args.code, scratch)
    steal0 = steal_jiffies()
    meta = {"label": args.label, "started": utc_now(), "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
            "cwd": str(Path.cwd()), "machine": machine(), "reps": args.reps, "n1k": args.n1k, "n100k": args.n100k,
            "concs": args.concs, "client": "python" if args.client == "python" or not smtp_source else "smtp-source",
            "smtp_sink": smtp_sink if smtp_sink and args.client != "python" else "bench/receivers.py smtp",
            "cells": [c[0] for c in cells], "quick": args.quick, "code": code, "quiet": args.quiet,
            "queue_settle": args.queue_settle, "metrics": args.metrics}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"results in {out}; cells: {', '.join(c[0] for c in cells) or 'none'}")

    users_file = scratch / "users"
    make_users(scratch, users_file)
    ctx = Context(args, out, scratch, users_file, smtp_source, smtp_sink)
    try:
        for name, _, run in cells:
            ctx.code = code_digest()
            log(f"cell {name} (code {ctx.code})")
            started = time.perf_counter()
            try:
                run(ctx)
            except SystemExit as problem:  # one broken cell must not lose the others
                ctx.save({"cell": name, "group": "error", "variant": "error", "rep": 0, "code": ctx.code,
                          "error": str(problem)[-2000:]})
                log(f"  cell {name} FAILED: {str(problem)[-500:]}")
            log(f"  {time.perf_counter() - started:.0f} s")
        steal1 = steal_jiffies()
        meta = json.loads((out / "meta.json").read_text())
        meta["finished"] = utc_now()
        total = steal1[1] - steal0[1]
        meta["steal_percent"] = round(100 * (steal1[0] - steal0[0]) / total, 1) if total else None
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        if args.anchors or args.anchors_only:
            run_anchors(ctx)
        elif args.anchors_results:
            shutil.copytree(args.anchors_results, out / "anchors", dirs_exist_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    text = summarize(out)
    (out / "summary.md").write_text(text)
    sys.stdout.write(text)
    if not args.no_results:
        write_results(args.results, args.label, text)
        log(f"wrote the '{args.label}' block of {args.results}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def make_users(scratch: Path, users_file: Path) -> None:
    """benchuser plus 2benchuser ... 10benchuser, with `mailgate user add` (bcrypt, cost 12) once per run."""
    config = scratch / "users.toml"
    config.write_text(f'[domains]\nlocal = ["example.test"]\n[users]\nfile = "{users_file}"\n'
                      '[[listen]]\nname = "smtp"\nprotocol = "smtp"\nendpoint = "tcp:1:interface=127.0.0.1"\n')
    for address in RCPT_USERS:
        subprocess.run([str(BIN / "mailgate"), "--config", str(config), "user", "add", address, "--password-stdin"],
                       input=f"{PASSWORD}\n".encode(), cwd=scratch, check=True, capture_output=True)
