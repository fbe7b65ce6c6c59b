"""A real rspamd for tests: started from the Debian package with a private configuration on free loopback ports.

Everything it writes (configuration, databases, pid file, log) is in a
temporary directory, its DNS goes nowhere (so no lookup waits on the
network), and its URL table is a handful of test suffixes (compiling the
full public suffix list takes rspamd about ten seconds). Its workers are its
children, in a process group of their own, which `stop` ends.

    with RspamdServer() as rspamd:
        ... POST to rspamd.url + "/checkv2" ...

Tests skip when the binary is missing: `pytest.mark.skipif(RSPAMD is None, reason=NO_RSPAMD)`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.gateway import accepts, free_port

RSPAMD = shutil.which("rspamd") or next(
    (path for path in ("/usr/bin/rspamd", "/usr/sbin/rspamd") if os.access(path, os.X_OK)), None)
NO_RSPAMD = "rspamd is not installed (Debian package rspamd; .ci/run installs it)"
SYSTEM_CONFIG = "/etc/rspamd/rspamd.conf"
STARTUP_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 10.0

# The GTUBE test string: rspamd's action for it is "reject", with smtp_message "Gtube pattern".
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# A rule for "a scored message": 8 points for any message with an X-Test-Spammy header.
SPAMMY_HEADER = "X-Test-Spammy"
SPAMMY_RULE = f"""
rspamd_config.MAILGATE_TEST_SPAMMY = {{
  callback = function(task) return task:get_header('{SPAMMY_HEADER}') ~= nil end,
  score = 8.0,
  description = 'mailgate test: scored message',
}}
"""
_TEST_SUFFIXES = "test\nexample\ncom\norg\nnet\n"


class RspamdServer:
    """One rspamd process (main, a normal worker, a controller) in a temporary directory."""

    def __init__(self, lua: str = SPAMMY_RULE, nameserver: str = "") -> None:
        self.lua = lua
        self.nameserver = nameserver  # "127.0.0.1:PORT" (a FakeDNSServer) for checks that need DNS; default none
        self.directory = Path(tempfile.mkdtemp(prefix="mailgate-rspamd-"))
        self.port = free_port()
        self.controller_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "log" / "rspamd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _configure(self) -> None:
        local = self.directory / "local.d"
        for name in ("local.d", "db", "run", "log"):
            (self.directory / name).mkdir()
        (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{self.port}";\ncount = 1;\n')
        (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{self.controller_port}";\n')
        (local / "worker-proxy.inc").write_text("enabled = false;\n")
        (local / "worker-fuzzy.inc").write_text("enabled = false;\ncount = 0;\n")
        (self.directory / "tld.dat").write_text(_TEST_SUFFIXES)
        dns = (f'dns {{ nameserver = ["{self.nameserver}"]; timeout = 2s; retransmits = 1; }}\n' if self.nameserver
               else 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }\n')
        (local / "options.inc").write_text(dns + f'url_tld = "{self.directory / "tld.dat"}";\n')
        (self.directory / "rspamd.local.lua").write_text(self.lua)

    def start(self) -> None:
        """Start rspamd and wait until its normal worker accepts connections."""
        if RSPAMD is None:
            raise RuntimeError(NO_RSPAMD)
        self._configure()
        d = self.directory
        self.process = subprocess.Popen(
            [RSPAMD, "-f", "-i", "-c", SYSTEM_CONFIG, f"--var=LOCAL_CONFDIR={d}", f"--var=DBDIR={d / 'db'}",
             f"--var=RUNDIR={d / 'run'}", f"--var=LOGDIR={d / 'log'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its workers are children: one process group to end
        )
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while not accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()[-3000:]
                self.stop()
                raise RuntimeError(f"rspamd did not start on 127.0.0.1:{self.port}; its log:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """End rspamd and its workers (TERM, then KILL), and remove its directory."""
        process, self.process = self.process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                process.wait()
            try:
                os.killpg(process.pid, signal.SIGKILL)  # a worker that outlived its main process
            except ProcessLookupError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RspamdServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
