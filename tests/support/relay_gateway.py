"""Whole-gateway relay tests' base: a real twistd relaying to fake SMTP servers behind fake DNS."""

from __future__ import annotations

import email
import json
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
from email import policy
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailgate.outbound.spool import QueuedMessage, QueueStore
from tests.support.fake_dns import FakeDNSServer
from tests.support.fake_smtp import FakeSMTPServer
from tests.support.gateway import (
    BIN,
    STARTUP_DEADLINE_SECONDS,
    Gateway,
    eventually,
    free_port,
    gateway_config,
)

PRIMARY, BACKUP = "127.0.0.2", "127.0.0.3"
ZONE = {
    "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
    "mx1.remote.test": {"A": [PRIMARY]},
    "mx2.remote.test": {"A": [BACKUP]},
}
ALICE = "alice@example.test"  # a local user: bounces to her land in her Maildir
BOB, CAROL = "bob@remote.test", "carol@remote.test"
HOSTNAME = "mx.example.test"  # tests.conftest.gateway_config's server.hostname
DEFER = "451 4.2.1 mailbox busy, try later"
ACCEPT = "250 2.1.5 recipient ok"
SHUTDOWN_GRACE_SECONDS = 10.0  # mailgate.app.service's grace for inbound sessions on SIGTERM


# --- helpers -------------------------------------------------------------------


def toml_table(name: str, values: dict[str, Any]) -> str:
    """One TOML table; JSON spells strings, integers and lists of them as TOML does."""
    lines = [f"[{name}]"] + [f"{json.dumps(key)} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def no_bare_line_ends(raw: bytes) -> bool:
    """True when every CR and every LF in `raw` belongs to a CRLF pair."""
    rest = raw.replace(b"\r\n", b"")
    return b"\r" not in rest and b"\n" not in rest


def queued_id(reply: bytes) -> str:
    """The id in mailgate's "250 2.0.0 Ok: queued as ID" reply."""
    text = reply.decode()
    assert "queued as " in text, text
    return text.rsplit("queued as ", 1)[1].strip()


def submit(gateway: Gateway, sender: str, recipients: list[str], body: bytes) -> str:
    """Send one message with smtplib (brief, blocking) and return mailgate's queue id."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:
        client.ehlo("client.test")
        code, reply = client.mail(sender)
        assert code == 250, (code, reply)
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            assert code == 250, (recipient, code, reply)
        code, reply = client.data(body)
        assert code == 250, (code, reply)
        return queued_id(reply)


class RawSMTP:
    """A line-at-a-time SMTP client on a plain socket, for bytes smtplib would clean up."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                assert chunk, "connection closed"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return int(lines[0][:3]), "\n".join(item[4:] for item in lines)

    def command(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()




async def pause(seconds: float) -> None:
    """Let the reactor (and so the fakes) run for a while."""
    await deferLater(reactor, seconds, lambda: None)


# --- the test case base ----------------------------------------------------------


class GatewayTestCase(TestCase):
    """A fresh directory, a fake DNS server serving ZONE, and helpers for the rest."""

    timeout = 90

    def setUp(self) -> None:
        # Not self.mktemp(): under pytest it writes into the working tree.
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-outbound-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        (self.root / "etc").mkdir()
        self.dns = FakeDNSServer(ZONE).start()
        self.addCleanup(self.dns.stop)
        self.queue = QueueStore(str(self.root / "var" / "queue"))

    async def serve(self, interface: str, port: int = 0, **knobs: Any) -> FakeSMTPServer:
        """A fake remote SMTP server on `interface`, stopped after the test."""
        server = FakeSMTPServer(**knobs)
        await server.start(interface, port)
        self.addCleanup(server.stop)
        return server

    async def two_mx(self, **knobs: Any) -> tuple[FakeSMTPServer, FakeSMTPServer]:
        """Primary and backup MX on the same port (relay.port is one number for all MX hosts)."""
        backup = await self.serve(BACKUP, **knobs)
        primary = await self.serve(PRIMARY, backup.port, **knobs)
        return primary, backup

    def gateway(self, mx_port: int, relay: dict[str, Any] | None = None, extra: str = "") -> Gateway:
        """Write the configuration (not started): relaying allowed from loopback, short retries."""
        settings: dict[str, Any] = {
            "allowed_networks": ["127.0.0.0/8"],
            "nameservers": [self.dns.nameserver],
            "port": mx_port,
            "retry_intervals": ["1s", "2s"],
        }
        settings.update(relay or {})
        transport = settings.pop("transport", None)
        text = toml_table("relay", settings)
        if transport:
            text += toml_table("relay.transport", transport)
        ports = {"smtp": free_port()}
        config = self.root / "mailgate.toml"
        config.write_text(gateway_config(ports, text + extra))
        gateway = Gateway(self.root, config, ports)
        self.addCleanup(self.stop, gateway)  # runs before the fakes stop (cleanups are LIFO)
        return gateway

    async def start(self, gateway: Gateway) -> Gateway:
        """Gateway.start() without blocking the reactor: queued mail may go out during start-up."""
        runs_before = gateway.log().count("mailgate started")
        gateway.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(gateway.log_path),
             "mailgate", "--config", str(gateway.config)],
            cwd=gateway.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

        def started() -> bool:
            if gateway.process.poll() is not None:
                output = gateway.process.stdout.read().decode()
                raise AssertionError(f"twistd exited {gateway.process.returncode}: {output}\n{gateway.log()}")
            if gateway.log().count("mailgate started") <= runs_before:
                return False
            return gateway._started()  # and every port accepts connections

        await eventually(started, "mailgate to start", STARTUP_DEADLINE_SECONDS)
        return gateway

    async def stop(self, gateway: Gateway, sig: int = signal.SIGTERM, seconds: float = 20.0) -> None:
        """Signal the gateway and wait, without blocking the reactor, until it is gone."""
        process = gateway.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                await eventually(lambda: process.poll() is not None, "mailgate to stop", seconds)
            except AssertionError:
                process.kill()
                process.wait()
                raise
        if process.stdout is not None:
            process.stdout.close()

    def kill_at_cleanup(self, gateway: Gateway) -> None:
        """SIGKILL before the SIGTERM cleanup, for a gateway that may hang on SIGTERM."""
        def kill() -> None:
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.process.kill()
        self.addCleanup(kill)  # cleanups run last-in first-out: this one comes first

    async def cli(self, gateway: Gateway, *args: str) -> subprocess.CompletedProcess:
        """`mailgate --config ... ARGS` in a thread: the reactor keeps serving the fakes meanwhile."""
        command = [str(BIN / "mailgate"), "--config", str(gateway.config), *args]
        return await deferToThread(
            subprocess.run, command, cwd=gateway.root, capture_output=True, text=True, timeout=60
        )

    async def queue_list(self, gateway: Gateway) -> list[dict[str, Any]]:
        done = await self.cli(gateway, "queue", "list", "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)

    def entry(self, queue_id: str) -> QueuedMessage | None:
        """The queue entry as on disk (env/ files are replaced atomically, so always whole)."""
        return self.queue.load(queue_id)

    async def attempted(self, queue_id: str, times: int = 1) -> QueuedMessage:
        """Wait until the queue has recorded `times` failed attempts for `queue_id`."""
        return await eventually(
            lambda: (e := self.entry(queue_id)) is not None and e.attempts >= times and e,
            f"{times} recorded attempt(s) for {queue_id}",
        )

    async def queue_empty(self) -> None:
        await eventually(lambda: not self.queue.ids(), "the queue to empty")

    def all_mail(self) -> list[Path]:
        """Every file in any Maildir of the gateway."""
        mail = self.root / "var" / "mail"
        return [path for path in mail.rglob("*") if path.is_file()] if mail.exists() else []

    async def bounce_for(self, gateway: Gateway, address: str, seconds: float = 15.0) -> tuple[bytes, Any]:
        """Wait for one message in `address`'s Maildir: (raw bytes, parsed message)."""
        [path] = await eventually(lambda: gateway.new_messages(address), f"a bounce to {address}", seconds)
        raw = path.read_bytes()
        return raw, email.message_from_bytes(raw, policy=policy.default)

    def assertReport(self, raw: bytes, parsed: Any) -> bytes:
        """An RFC 3464 bounce sent from <>; returns its message/delivery-status part."""
        self.assertTrue(raw.startswith(b"Return-Path: <>\n"), raw[:200])
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        self.assertEqual(parsed.get_param("report-type"), "delivery-status")
        parts = list(parsed.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts][:2], ["text/plain", "message/delivery-status"])
        return parts[1].as_bytes()
