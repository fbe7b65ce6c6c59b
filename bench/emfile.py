"""A gateway out of file descriptors, and after (issue #12, item 6).

Not a speed benchmark. `twistd -n mailgate` starts with RLIMIT_NOFILE =
`--nofile` (300) and a POP3 and an SMTP listener; the script opens up to
`--connections` (400) POP3 connections (until three in a row go
unanswered), holds them `--hold` seconds, then closes them all and asks
`mailgate queue flush` of the running server. It prints what the server
spent and logged while it was out of descriptors, and whether the CLI's
requests are still served afterwards.

With `--spin`, instead: a bare Twisted tcp.Port in a child process whose
descriptors are all taken and whose Twisted EMFILE reserve is gone (as
when a thread took its slot), with one connection waiting; it counts the
port's accept attempts and CPU in 1.5 s, with Twisted alone and with
mailgate.net.accept_backoff.

    PYTHONPATH=. .venv/bin/python bench/emfile.py
    PYTHONPATH=. .venv/bin/python bench/emfile.py --nofile 300 --connections 400 --hold 5
    PYTHONPATH=. .venv/bin/python bench/emfile.py --spin
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.descriptors import connect_many, out_of_descriptors
from tests.support.gateway import BIN, Gateway, free_port, gateway_config

NO_CONNECTION_LIMITS = """
[limits]
max_connections_per_ip = 100000
connection_rate = "off"
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spin() -> None:
    print("a tcp.Port out of descriptors, its EMFILE reserve lost, one connection waiting, 1.5 s:")
    for mode, what in (("twisted", "Twisted alone"), ("backoff", "with pause_on_exhaustion")):
        reads, cpu, _ = out_of_descriptors(mode)
        print(f"  {what}: {reads} accept attempts, {cpu:.2f} s CPU")


def run(root: Path, nofile: int, connections: int, hold: float) -> None:
    ports = {"smtp": free_port(), "pop3": free_port()}
    (root / "etc").mkdir()
    config = root / "mailgate.toml"
    config.write_text(gateway_config(ports, NO_CONNECTION_LIMITS))
    gateway = Gateway(root, config, ports)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    gateway.start(preexec_fn=limit)
    assert gateway.process is not None
    try:
        time.sleep(1.5)  # the request loop has run at least once
        lines_before, cpu_before = len(gateway.log().splitlines()), cpu_seconds(gateway.process.pid)
        sockets = connect_many(ports["pop3"], connections)
        time.sleep(hold)
        cpu = cpu_seconds(gateway.process.pid) - cpu_before
        held = gateway.log().splitlines()[lines_before:]
        for sock in sockets:
            sock.close()
        time.sleep(1.0)  # the server sees the closes and frees the descriptors
        started = time.monotonic()
        flush = subprocess.run([str(BIN / "mailgate"), "--config", str(config), "queue", "flush"], cwd=root,
                               capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
        text = gateway.log()
    finally:
        gateway.stop()
    kinds: dict[str, int] = {}
    for line in held:
        kind = line.partition("] ")[2][:60]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"RLIMIT_NOFILE {nofile}, {len(sockets)} POP3 connections made, held {hold:g} s:")
    print(f"  twistd CPU while out of descriptors: {cpu:.2f} s ({cpu / hold:.0%} of one core)")
    print(f"  log lines while out of descriptors: {len(held)}")
    for kind, count in sorted(kinds.items(), key=lambda item: -item[1])[:5]:
        print(f"    {count:6d}  {kind}")
    print(f"  tracebacks in the whole log: {text.count('Traceback (most recent call last)')}")
    print(f"  then `mailgate queue flush`: exit {flush.returncode} after {took:.1f} s "
          f"{(flush.stdout + flush.stderr).strip()[:100]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nofile", type=int, default=300)
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--spin", action="store_true", help="the accept loop alone, with and without the backoff")
    args = parser.parse_args()
    if args.spin:
        spin()
        return
    root = Path(tempfile.mkdtemp(prefix="mailgate-emfile-"))
    try:
        run(root, args.nofile, args.connections, args.hold)
    finally:
        shutil.rmtree(root, True)


if __name__ == "__main__":
    main()
