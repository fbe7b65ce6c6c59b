"""Postfix's smtp-sink as a far end for tests: a real SMTP server, not written by us, that dumps each message.

A relay test that ends at our own FakeSMTPServer proves mailgate and the
fake agree; one that ends at smtp-sink (Debian package postfix) proves the
bytes mailgate sends are what an independent SMTP server receives. Each
transaction goes to a file (`-d`), read back as the message received:

    sink = PostfixSink()                   # dumps in a directory of its own, removed by stop()
    await sink.start("127.0.0.2")          # sink.port: a free port on that address
    self.addCleanup(sink.stop)
    [message] = await sink.received(1)     # CRLF lines, dot-stuffing undone, smtp-sink's own header lines first

Tests skip when it is missing: `pytest.mark.skipif(SMTP_SINK is None, reason=NO_SMTP_SINK)`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.gateway import accepts, eventually, free_port

SMTP_SINK = next((path for path in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/smtp-sink", shutil.which("smtp-sink"))
                  if path and os.access(path, os.X_OK)), None)
NO_SMTP_SINK = "Postfix's smtp-sink is not installed (Debian package postfix; .ci/run installs it)"


def unstuffed(dump: bytes) -> bytes:
    """One dump file as the message received: smtp-sink writes LF lines, keeps the client's dot-stuffing
    (RFC 5321 4.5.2) and appends one empty line (smtp-sink(1), DUMP FILE FORMAT)."""
    lines = dump.split(b"\n")
    if lines[-2:] == [b"", b""]:
        lines = lines[:-2]
    return b"".join((line[1:] if line.startswith(b"..") else line) + b"\r\n" for line in lines)


class PostfixSink:
    def __init__(self) -> None:
        # Its own directory under /tmp: as root smtp-sink writes as nobody, who cannot enter a test's 0700 one.
        self.directory = Path(tempfile.mkdtemp(prefix="mailgate-smtp-sink-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    async def start(self, interface: str) -> int:
        assert SMTP_SINK is not None
        command = [SMTP_SINK, "-d", f"{self.directory}/%H%M%S."]
        if os.geteuid() == 0:  # smtp-sink drops root privileges to -u's user, who must be able to write the dumps
            self.directory.chmod(0o777)
            command += ["-u", "nobody"]
        self.port = free_port(interface)
        self.process = subprocess.Popen([*command, f"{interface}:{self.port}", "16"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await eventually(lambda: self.process is not None and (self.process.poll() is not None
                                                                or accepts(self.port, interface)), "smtp-sink to listen")
        assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
        return self.port

    def dumps(self) -> list[bytes]:
        """The files written so far, oldest first; one still being written is left out (no final empty line yet)."""
        files = sorted(self.directory.iterdir(), key=lambda path: path.stat().st_mtime_ns)
        return [data for data in (path.read_bytes() for path in files) if data.endswith(b"\n\n")]

    async def received(self, count: int) -> list[bytes]:
        await eventually(lambda: len(self.dumps()) >= count, f"smtp-sink to receive {count} message(s)")
        return [unstuffed(dump) for dump in self.dumps()]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)
