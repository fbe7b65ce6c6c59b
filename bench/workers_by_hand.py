"""By hand, not the harness: CPU per message of the master and of each worker of one running gateway.

    PYTHONPATH=TREE .venv/bin/python bench/workers_by_hand.py WORKERS N REPS

Starts `twistd -n mailgate` with `server.workers = WORKERS` in a temporary
directory (durable 1 KB into a Maildir, limits off as in the harness's
workers cells), sends 500 messages to warm it up, then REPS times N with
`/usr/sbin/smtp-source -s 50 -l 1024` (one connection per message), and
prints each process's CPU (utime + stime from /proc/PID/stat) per message.
No quiet-machine wait and no other process accounted: on a shared machine
read the master's figure, which is small and steady, before the workers'.
KEEP=1 keeps the directory; PROFILE=FILE profiles the master (cProfile).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import BIN, CONFIG, free_port  # the harness's gateway config: the same limits off

workers, n, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
TICK = os.sysconf("SC_CLK_TCK")


def ticks(pid: int) -> int:
    """utime + stime, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


root = Path(tempfile.mkdtemp(prefix="anvil-measure-"))
port = free_port()
(root / "etc").mkdir()
(root / "mailgate.toml").write_text(CONFIG.format(port=port, server=f"workers = {workers}", extra=""))
subprocess.run([str(BIN / "mailgate"), "--config", "mailgate.toml", "user", "add", "benchuser@example.test",
                "--password-stdin"], input=b"pw\n", cwd=root, check=True, capture_output=True)
log = root / "twistd.log"
profile = [f"--profile={os.environ['PROFILE']}", "--profiler=cprofile", "--savestats"] if os.environ.get("PROFILE") else []
proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log), *profile, "mailgate", "--config",
                         "mailgate.toml"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
ready = f"workers: all {workers} ready" if workers > 1 else "mailgate started"
deadline = time.time() + 60
while not (log.exists() and ready in log.read_text()):
    assert time.time() < deadline and proc.poll() is None, log.read_text() if log.exists() else "no log"
    time.sleep(0.1)
new = root / "var/mail/example.test/benchuser/new"


def count() -> int:
    return len(os.listdir(new)) if new.is_dir() else 0


def run(m: int) -> None:
    start = count()
    subprocess.run(["/usr/sbin/smtp-source", "-s", "50", "-m", str(m), "-l", "1024", "-M", "client.test",
                    "-f", "bench@client.test", "-t", "benchuser@example.test", f"127.0.0.1:{port}"], check=True)
    while count() < start + m:
        time.sleep(0.02)


try:
    run(500)  # warm-up
    pids = [proc.pid] + children(proc.pid)
    for rep in range(reps):
        before = {pid: ticks(pid) for pid in pids}
        t0 = time.time()
        run(n)
        wall = time.time() - t0
        after = {pid: ticks(pid) for pid in pids}
        per = [(after[p] - before[p]) * 1000.0 / TICK / n for p in pids]
        names = ["master"] + [f"w{i}" for i in range(len(pids) - 1)] if workers > 1 else ["server"]
        print(f"rep {rep}: {n / wall:.0f} msgs/s; ms/msg " + " ".join(f"{name}={v:.3f}" for name, v in zip(names, per))
              + f" total={sum(per):.3f}", flush=True)
finally:
    proc.terminate()
    proc.wait(30)
    if os.environ.get("KEEP"):
        print(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
