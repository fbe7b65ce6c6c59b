"""The PROXY protocol on a real `twistd mailgate`: a balancer on 127.0.0.2 speaks for its clients.

`listen[].proxy = ["127.0.0.2/32"]`: connections from 127.0.0.2 (the
"balancer") begin with a v1 or v2 header and are then the header's client
for Received:, relay.allowed_networks and limits.max_connections_per_ip;
connections from 127.0.0.1 are ordinary clients, and a header from one is
refused. Before STARTTLS and with implicit TLS alike; a health check that
opens and closes leaves nothing in the log.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, client_tls, free_port, gateway_config, wait_for

BALANCER, ELSEWHERE = "127.0.0.2", "127.0.0.1"
ALICE = "alice@example.test"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {source} {destination} {port} 25\r\n".encode()


def v2(source: str, port: int = 40000, command: int = 0x21) -> bytes:
    """A version 2 header: PROXY (0x21) or LOCAL (0x20), TCP over IPv4 or IPv6."""
    ip = ipaddress.ip_address(source)
    destination = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    addresses = ip.packed + destination.packed + struct.pack("!HH", port, 25)
    family = 0x21 if ip.version == 6 else 0x11
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(addresses)) + addresses


class Client:
    """A line-reading SMTP client bound to a chosen loopback source address."""

    def __init__(self, port: int, source: str, header: bytes = b"", tls: bool = False, split: bool = False) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        if split:  # the header in pieces, as TCP may deliver it
            for index in range(0, len(header), 5):
                raw.sendall(header[index:index + 5])
                time.sleep(0.01)
        elif header:
            raw.sendall(header)
        self.sock: socket.socket | ssl.SSLSocket = client_tls().wrap_socket(raw) if tls else raw
        self.buffer = b""

    def reply(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                try:
                    chunk = self.sock.recv(4096)
                except ConnectionResetError:  # an abort: closed all the same
                    chunk = b""
                if not chunk:
                    return "\n".join(lines) or "<closed>"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("proxy")
    ports = {"mx": free_port(), "smtps": free_port(), "pop3": free_port()}
    listeners = (
        f'[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:{ports["mx"]}:interface=127.0.0.1"\n'
        f'tls = "starttls"\nproxy = ["{BALANCER}/32"]\n\n'
        f'[[listen]]\nname = "smtps"\nprotocol = "smtp"\nendpoint = "tcp:{ports["smtps"]}:interface=127.0.0.1"\n'
        f'tls = "implicit"\nproxy = ["{BALANCER}"]\n\n'
        f'[[listen]]\nname = "pop3"\nprotocol = "pop3"\nendpoint = "tcp:{ports["pop3"]}:interface=127.0.0.1"\n'
        f'proxy = ["{BALANCER}"]\n\n'
    )
    extra = '[limits]\nmax_connections_per_ip = 1\n[relay]\nallowed_networks = ["203.0.113.0/24"]\n'
    config = root / "mailgate.toml"
    config.write_text(gateway_config(ports, extra, listeners))
    (root / "etc").mkdir()
    # Gateway.start() waits for its ports to accept, by connecting from 127.0.0.1: not a balancer.
    started = Gateway(root, config, ports).start()
    started.add_user(ALICE)
    yield started
    if started.process is not None and started.process.poll() is None:
        started.process.kill()
        started.process.wait()


def received_client(gateway: Gateway, client: Client, marker: str) -> str:
    """Send one message to ALICE; the client address its Received: header names."""
    client.command("EHLO client.test")
    assert client.command("MAIL FROM:<s@remote.test>").startswith("250")
    assert client.command(f"RCPT TO:<{ALICE}>").startswith("250")
    assert client.command("DATA").startswith("354")
    assert client.command(f"Subject: {marker}\r\n\r\nhi\r\n.").startswith("250")
    message = wait_for(lambda: [p.read_bytes() for p in gateway.new_messages(ALICE) if marker.encode() in p.read_bytes()],
                       10, "the message")[0]
    return message.split(b"Received: from client.test (", 1)[1].split(b")", 1)[0].decode()


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_the_header_source_is_the_client_in_received(gateway: Gateway, header) -> None:
    client = Client(gateway.ports["mx"], BALANCER, header("203.0.113.7"))
    try:
        assert client.reply().startswith("220 mx.example.test")
        assert received_client(gateway, client, f"proxied-{header.__name__}") == "[203.0.113.7]"
    finally:
        client.close()


def test_a_header_split_by_tcp_is_read_whole(gateway: Gateway) -> None:
    client = Client(gateway.ports["mx"], BALANCER, v2("2001:db8::7"), split=True)
    try:
        assert client.reply().startswith("220 ")
        assert received_client(gateway, client, "split-v2") == "[2001:db8::7]"
    finally:
        client.close()


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_max_connections_per_ip_counts_the_header_source(gateway: Gateway, header) -> None:
    first = Client(gateway.ports["mx"], BALANCER, header("198.51.100.1"))
    try:
        assert first.reply().startswith("220 ")
        second = Client(gateway.ports["mx"], BALANCER, header("198.51.100.1"))
        other = Client(gateway.ports["mx"], BALANCER, header("198.51.100.2"))
        assert second.reply().startswith("421 4.7.0 Too many connections from your address")
        assert other.reply().startswith("220 ")  # the balancer's own address is not what is counted
        second.close(), other.close()
    finally:
        first.close()


def test_relay_networks_see_the_header_source(gateway: Gateway) -> None:
    for source, code in (("203.0.113.9", "250"), ("198.51.100.9", "554")):
        client = Client(gateway.ports["mx"], BALANCER, v1(source))
        try:
            client.reply()
            client.command("EHLO client.test")
            client.command("MAIL FROM:<s@remote.test>")
            assert client.command("RCPT TO:<bob@remote.test>")[:3] == code, source
        finally:
            client.close()


def test_starttls_after_the_header(gateway: Gateway) -> None:
    client = Client(gateway.ports["mx"], BALANCER, v1("203.0.113.10"))
    try:
        client.reply()
        client.command("EHLO client.test")
        assert client.command("STARTTLS").startswith("220 ")
        client.sock = client_tls().wrap_socket(client.sock)
        assert "250-PIPELINING" in client.command("EHLO client.test")
        assert received_client(gateway, client, "proxied-starttls") == "[203.0.113.10]"
    finally:
        client.close()


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_implicit_tls_after_the_header(gateway: Gateway, header) -> None:
    client = Client(gateway.ports["smtps"], BALANCER, header("203.0.113.11"), tls=True)
    try:
        assert client.reply().startswith("220 mx.example.test")
        assert received_client(gateway, client, f"proxied-smtps-{header.__name__}") == "[203.0.113.11]"
    finally:
        client.close()


def test_a_local_header_leaves_the_balancer_as_the_client(gateway: Gateway) -> None:
    client = Client(gateway.ports["mx"], BALANCER, v2("203.0.113.12", command=0x20))
    try:
        assert client.reply().startswith("220 ")
        assert received_client(gateway, client, "proxied-local") == f"[{BALANCER}]"
    finally:
        client.close()


def test_a_header_from_elsewhere_is_refused(gateway: Gateway) -> None:
    client = Client(gateway.ports["mx"], ELSEWHERE)
    try:
        assert client.reply().startswith("220 ")
        assert client.command(v1("203.0.113.13").decode().strip()).startswith("550 5.7.1 ")
        assert received_client(gateway, client, "not-proxied") == f"[{ELSEWHERE}]"
    finally:
        client.close()
    assert "listen[mx].proxy: a PROXY header from 127.0.0.1, which it does not list: refused" in gateway.log()


def test_a_v2_header_from_elsewhere_is_no_command(gateway: Gateway) -> None:
    """Its signature ends in QUIT, by design: a server that does not expect it says goodbye."""
    client = Client(gateway.ports["mx"], ELSEWHERE, v2("203.0.113.14"))
    try:
        assert client.reply().startswith("220 ")
        replies = []
        while (reply := client.reply()) != "<closed>":
            replies.append(reply)
        assert replies and replies[-1].startswith("221 ") and not any(r.startswith("250") for r in replies)
    finally:
        client.close()


def test_no_header_from_the_balancer_closes_with_one_log_line(gateway: Gateway) -> None:
    client = Client(gateway.ports["mx"], BALANCER, b"EHLO client.test\r\n")
    try:
        assert client.reply() == "<closed>"  # never greeted: the server had not started
    finally:
        client.close()
    wait_for(lambda: "listen[mx].proxy: connection from 127.0.0.2 closed: not a valid PROXY header" in gateway.log(),
             10, "the log line")


def test_a_health_check_is_no_error(gateway: Gateway) -> None:
    before = gateway.log()
    for port in (gateway.ports["mx"], gateway.ports["smtps"]):
        for _ in range(3):
            Client(port, BALANCER).close()
    probe = Client(gateway.ports["mx"], BALANCER, v1("203.0.113.15"))  # and the server is still there
    try:
        assert probe.reply().startswith("220 ")
    finally:
        probe.close()
    new = gateway.log()[len(before):]
    assert "Traceback" not in new and "Unhandled" not in new and "proxy" not in new and "rror" not in new, new


def test_pop3_counts_the_header_source_too(gateway: Gateway) -> None:
    """Any listener: POP3's connection limits and log lines see the header's client as well."""
    first = Client(gateway.ports["pop3"], BALANCER, v2("198.51.100.60"))
    try:
        assert first.reply().startswith("+OK")
        second = Client(gateway.ports["pop3"], BALANCER, v1("198.51.100.60"))
        assert second.reply().startswith("-ERR")
        second.close()
        other = Client(gateway.ports["pop3"], BALANCER, v1("198.51.100.61"))
        assert other.reply().startswith("+OK")
        other.close()
    finally:
        first.close()
    wait_for(lambda: "POP3 connection from 198.51.100.60 refused" in gateway.log(), 10, "the refusal's log line")
