"""What damaged queue entries do to a running gateway and to `mailgate queue list` (issue #12, item 5).

Not a speed benchmark. A throw-away gateway directory gets a spool with one
good entry (its smarthost's port is closed, so it stays queued) and four
damaged `env/` files, each beside a message file: truncated JSON, an empty
file, `{}`, and bytes that are not UTF-8. `twistd -n mailgate` runs on it
for `--seconds`; then the script counts the tracebacks in its log, runs
`mailgate queue list` and `queue list --json`, and prints their exit status.

    PYTHONPATH=. .venv/bin/python bench/damaged_spool.py             # 25 s
    PYTHONPATH=. .venv/bin/python bench/damaged_spool.py --keep      # keep the directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
GOOD = {
    "id": "GOOD1", "sender": "alice@example.test", "arrived": 0.0, "attempts": 0, "next_attempt": 0.0,
    "recipients": [{"address": "bob@remote.test", "route": "mx", "status": "pending"}],
}
DAMAGED = {
    "TRUNCATED1": json.dumps(GOOD).replace("GOOD1", "TRUNCATED1").encode()[:60],
    "EMPTY1": b"",
    "BRACES1": b"{}",
    "GARBAGE1": bytes(range(128, 256)),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(root: Path) -> Path:
    config = root / "mailgate.toml"
    config.write_text(f"""
[server]
hostname = "mx.example.test"
[[listen]]
name = "smtp"
protocol = "smtp"
endpoint = "tcp:{free_port()}:interface=127.0.0.1"
tls = "none"
[domains]
local = ["example.test"]
[users]
file = "etc/users"
[relay]
smarthost = "127.0.0.1:{free_port()}"
retry_intervals = ["1s", "2s"]
""")
    queue = root / "var" / "queue"
    for name in ("msg", "env", "tmp", "control"):
        (queue / name).mkdir(parents=True, mode=0o700)
    now = time.time()
    entries = {"GOOD1": json.dumps({**GOOD, "arrived": now, "next_attempt": now}).encode(), **DAMAGED}
    for queue_id, env in entries.items():
        (queue / "msg" / queue_id).write_bytes(b"Subject: test\n\nhello\n")
        (queue / "env" / queue_id).write_bytes(env)
        os.utime(queue / "env" / queue_id, (now, now))
    return config


def run(root: Path, config: Path, seconds: float) -> dict[str, object]:
    log = root / "twistd.log"
    server = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log),
                               "mailgate", "--config", str(config)], cwd=root)
    try:
        deadline = time.monotonic() + 30
        while "mailgate started" not in (log.read_text() if log.exists() else ""):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"mailgate did not start:\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.1)
        time.sleep(seconds)
        text = log.read_text()
        listing = [subprocess.run([str(BIN / "mailgate"), "--config", str(config), "queue", "list", *extra],
                                  cwd=root, capture_output=True, text=True, timeout=60, check=False)
                   for extra in ((), ("--json",))]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    corrupt = root / "var" / "queue" / "corrupt"
    return {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "log lines naming a damaged entry": sum(any(q in line for q in DAMAGED) for line in text.splitlines()),
        "queue list": listing[0].returncode,
        "queue list --json": listing[1].returncode,
        "listed": listing[1].stdout.count('"id"'),
        "files in corrupt/": len(os.listdir(corrupt)) if corrupt.exists() else 0,
        "stderr": (listing[0].stderr + listing[1].stderr).strip().splitlines()[-1:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--keep", action="store_true", help="keep the gateway directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mailgate-damaged-"))
    try:
        figures = run(root, prepare(root), args.seconds)
    finally:
        if not args.keep:
            shutil.rmtree(root, True)
    print(f"4 damaged entries and 1 good one, {args.seconds:g} s of twistd:")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    if args.keep:
        print(f"  directory: {root}")


if __name__ == "__main__":
    main()
