"""`mailgate reload`: the running server reads its configuration again (SIGHUP, found through twistd's pidfile)."""

from __future__ import annotations

import argparse
import os
import signal

from mailgate.cli.queue_control import CommandError
from mailgate.config import load_config

DEFAULT_PIDFILE = "twistd.pid"  # twistd's --pidfile default, in its --rundir


def add_reload_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    reload = commands.add_parser("reload", parents=[common],
                                 help="make the running server read its configuration again (SIGHUP)")
    reload.add_argument("--pidfile", default=DEFAULT_PIDFILE, metavar="FILE",
                        help=f"twistd's --pidfile, relative to the run directory (default: {DEFAULT_PIDFILE})")
    reload.set_defaults(handler=_reload)


def _reload(args: argparse.Namespace) -> int:
    """Check the file first (a bad one would be refused by the server anyway), then signal."""
    load_config(args.config)  # ConfigError: main() prints its problem lines, nothing is signalled
    pid = _running_pid(args.pidfile)
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise CommandError(f"not allowed to signal pid {pid} (from {args.pidfile}): run as its user or root") from None
    print(f"reload: sent SIGHUP to mailgate (pid {pid}); its log says whether the configuration was applied")
    return 0


def _running_pid(pidfile: str) -> int:
    try:
        with open(pidfile) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        raise CommandError(f"no pidfile {os.path.abspath(pidfile)}: is the server running there, with twistd's "
                           "--pidfile? (or give --pidfile FILE, or use kill -HUP / systemctl reload)") from None
    if not text.isdigit():
        raise CommandError(f"{pidfile} does not hold a process id: {text[:40]!r}")
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise CommandError(f"{pidfile} names pid {pid}, which is not running (a stale pidfile)") from None
    except PermissionError:
        pass  # it exists; the SIGHUP itself will say whether we may signal it
    return pid
