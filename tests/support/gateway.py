"""A real `twistd mailgate` process on loopback, and the helpers tests use to drive and wait on it."""

from __future__ import annotations

import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


BIN = Path(sys.executable).parent
STARTUP_DEADLINE_SECONDS = 30.0


def client_tls() -> ssl.SSLContext:
    """A client TLS context that accepts the gateway's self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def tls12_handshake(port: int, suite: str) -> str:
    """The suite negotiated on 127.0.0.1:`port` by an implicit-TLS client offering only TLS 1.2
    and only `suite` (an OpenSSL name), or "refused"."""
    context = client_tls()
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{suite}:@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
            return str(tls.cipher()[0])
    except (ssl.SSLError, OSError):
        return "refused"


async def eventually(predicate: Callable[[], object], what: str, seconds: float = 15.0) -> object:
    """Poll `predicate` without blocking the reactor (trial tests whose fakes
    live in it) until it returns something truthy, or fail at the deadline."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + seconds
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (Linux: ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = range(max(1024, _ephemeral_low() - 12_000), _ephemeral_low())


def free_port(interface: str = "127.0.0.1") -> int:
    """A port free on `interface` right now, below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) comes from the range it also gives
    every outgoing connection, so between this check and the server's bind
    any client socket of the test run could take it ("Address already in
    use"); ports below the range are never handed out that way.
    """
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind((interface, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on {interface} in {_PORTS.start}-{_PORTS.stop - 1}")


def wait_for(predicate: Callable[[], object], deadline_seconds: float = 10.0, what: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Gateway:
    """A running `twistd -n mailgate` in its own directory."""

    root: Path
    config: Path
    ports: dict[str, int]
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "twistd.log"

    def start(self, preexec_fn: Callable[[], None] | None = None, nofile: int | None = None,
              pidfile: str = "") -> "Gateway":
        """Start twistd; `preexec_fn` runs in the child before exec: keep it to setrlimit and signal
        dispositions (it runs after fork, beside no other thread). With `nofile`, under that soft
        RLIMIT_NOFILE (this process keeps its own). `pidfile`: twistd's --pidfile, none by default."""
        def in_child() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            if preexec_fn is not None:
                preexec_fn()

        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", f"--pidfile={pidfile}", "--logfile", str(self.log_path),
             "mailgate", "--config", str(self.config)],
            cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=in_child if nofile is not None or preexec_fn is not None else None,  # noqa: PLW1509
        )
        wait_for(self._started, STARTUP_DEADLINE_SECONDS, "mailgate to start")
        return self

    def run_until_exit(self, timeout: float = STARTUP_DEADLINE_SECONDS) -> subprocess.CompletedProcess[str]:
        """Run twistd in the foreground until it exits by itself (start-up refused): status and output."""
        return subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(self.log_path),
             "mailgate", "--config", str(self.config)],
            cwd=self.root, capture_output=True, text=True, timeout=timeout,
        )

    def _started(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            output = self.process.stdout.read().decode() if self.process.stdout else ""
            raise AssertionError(f"twistd exited {self.process.returncode}: {output}\n{self.log()}")
        return "mailgate started" in self.log() and all(accepts(p) for p in self.ports.values())

    def log(self) -> str:
        """The whole log, oldest first: twistd rotates its file at 1 MB (twistd.log.1, .2, ...)."""
        rotated = sorted(self.root.glob(self.log_path.name + ".*"), key=lambda path: -int(path.suffix[1:]))
        return "".join(path.read_text() for path in [*rotated, self.log_path] if path.exists())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the process to end; return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def mailbox(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.root / "var" / "mail" / domain / local

    def new_messages(self, address: str) -> list[Path]:
        new = self.mailbox(address) / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def add_user(self, address: str, password: str = "secret") -> None:
        subprocess.run(
            [str(BIN / "mailgate"), "--config", str(self.config), "user", "add", address, "--password-stdin"],
            input=f"{password}\n".encode(), cwd=self.root, check=True, capture_output=True,
        )


def accepts(port: int, interface: str = "127.0.0.1") -> bool:
    """Whether something listens on interface:port now (a connection is made and closed)."""
    try:
        with socket.create_connection((interface, port), timeout=1):
            return True
    except OSError:
        return False


def gateway_config(ports: dict[str, int], extra: str = "", listeners: str | None = None) -> str:
    """A config with one plain-text listener per entry of `ports` (name = protocol)."""
    if listeners is None:
        listeners = "".join(
            f'[[listen]]\nname = "{name}"\nprotocol = "{"pop3" if name.startswith("pop3") else name}"\n'
            f'endpoint = "tcp:{port}:interface=127.0.0.1"\n'
            f'tls = "{"none" if name in ("smtp", "pop3") else "starttls"}"\n\n'
            for name, port in ports.items()
        )
    return textwrap.dedent(
        """\
        [server]
        hostname = "mx.example.test"
        [domains]
        local = ["example.test"]
        [users]
        file = "etc/users"
        """
    ) + listeners + extra
