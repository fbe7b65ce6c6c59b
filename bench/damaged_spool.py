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
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.gateway import BIN, Gateway, free_port, gateway_config

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


def prepare(root: Path) -> Gateway:
    ports = {"smtp": free_port()}
    (root / "etc").mkdir()
    config = root / "mailgate.toml"
    config.write_text(gateway_config(ports, f"""
[relay]
smarthost = "127.0.0.1:{free_port()}"
retry_intervals = ["1s", "2s"]
"""))
    queue = root / "var" / "queue"
    for name in ("msg", "env", "tmp", "control"):
        (queue / name).mkdir(parents=True, mode=0o700)
    now = time.time()
    entries = {"GOOD1": json.dumps({**GOOD, "arrived": now, "next_attempt": now}).encode(), **DAMAGED}
    for queue_id, env in entries.items():
        (queue / "msg" / queue_id).write_bytes(b"Subject: test\n\nhello\n")
        (queue / "env" / queue_id).write_bytes(env)
        os.utime(queue / "env" / queue_id, (now, now))
    return Gateway(root, config, ports)


def run(gateway: Gateway, seconds: float) -> dict[str, object]:
    gateway.start()
    try:
        time.sleep(seconds)
        text = gateway.log()
        listing = [subprocess.run([str(BIN / "mailgate"), "--config", str(gateway.config), "queue", "list",
                                   *extra], cwd=gateway.root, capture_output=True, text=True, timeout=60,
                                  check=False)
                   for extra in ((), ("--json",))]
    finally:
        gateway.stop()
    corrupt = gateway.root / "var" / "queue" / "corrupt"
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
        figures = run(prepare(root), args.seconds)
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
