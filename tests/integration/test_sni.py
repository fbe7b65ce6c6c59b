"""SNI on a real `twistd mailgate`: `[tls.sni."HOSTNAME"]` pairs chosen by the name the client asks for.

Checked with `openssl s_client -servername` (as an operator would) on implicit-TLS,
SMTP STARTTLS and POP3 STLS listeners, and with Python's ssl for the names
the server then goes by: the greeting (implicit TLS) and the EHLO reply
after STARTTLS say the SNI name when a pair matches, server.hostname when
not. No SNI, or an unknown name: the `[tls]` pair.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.support.gateway import Gateway, free_port, gateway_config

HOSTNAME = "mx.example.test"  # server.hostname, and the [tls] pair's name


def write_pair(ca: trustme.CA, directory: Path, name: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(name)
    safe = name.replace("*", "star")
    cert, key = directory / f"{safe}.pem", directory / f"{safe}.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root: Path = tmp_path_factory.mktemp("sni")
    ca = trustme.CA()
    (root / "pki").mkdir()
    default = write_pair(ca, root / "pki", HOSTNAME)
    named = {name: write_pair(ca, root / "pki", name) for name in ("mail.example.org", "*.example.net")}
    ports = {"smtps": free_port(), "smtp": free_port(), "pop3": free_port()}
    listeners = (
        f'[[listen]]\nname = "smtps"\nprotocol = "smtp"\nendpoint = "tcp:{ports["smtps"]}:interface=127.0.0.1"\n'
        f'tls = "implicit"\n\n'
        f'[[listen]]\nname = "smtp"\nprotocol = "smtp"\nendpoint = "tcp:{ports["smtp"]}:interface=127.0.0.1"\n'
        f'tls = "starttls"\n\n'
        f'[[listen]]\nname = "pop3"\nprotocol = "pop3"\nendpoint = "tcp:{ports["pop3"]}:interface=127.0.0.1"\n'
        f'tls = "starttls"\n\n'
        f'[tls]\ncertificate = "{default[0]}"\nkey = "{default[1]}"\n'
    )
    for name, (cert, key) in named.items():
        listeners += f'[tls.sni."{name}"]\ncertificate = "{cert}"\nkey = "{key}"\n'
    config = root / "mailgate.toml"
    config.write_text(gateway_config(ports, "", listeners))
    (root / "etc").mkdir()
    started = Gateway(root, config, ports).start()
    yield started
    if started.process is not None and started.process.poll() is None:
        started.process.kill()
        started.process.wait()


def served_names(port: int, servername: str | None, starttls: str | None = None) -> list[str]:
    """The DNS names of the certificate `openssl s_client` is served."""
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    command += ["-servername", servername] if servername else ["-noservername"]
    command += ["-starttls", starttls] if starttls else []
    result = subprocess.run(command, input=b"QUIT\r\n", capture_output=True, timeout=20)
    pem = re.search(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", result.stdout, re.S)
    assert pem, result.stdout.decode(errors="replace")[-500:] + result.stderr.decode(errors="replace")[-500:]
    certificate = x509.load_pem_x509_certificate(pem[0])
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


@pytest.mark.parametrize("listener", ["smtps", "smtp", "pop3"])
@pytest.mark.parametrize("servername, expected", [
    ("mail.example.org", "mail.example.org"), ("MAIL.Example.ORG", "mail.example.org"),
    ("a.example.net", "*.example.net"), ("a.b.example.net", HOSTNAME), ("example.net", HOSTNAME),
    ("other.test", HOSTNAME), (None, HOSTNAME),
])
def test_openssl_s_client_gets_the_certificate_of_its_name(gateway: Gateway, listener: str, servername: str | None,
                                                            expected: str) -> None:
    starttls = {"smtp": "smtp", "pop3": "pop3"}.get(listener)
    assert served_names(gateway.ports[listener], servername, starttls) == [expected]


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def read_reply(sock: socket.socket) -> str:
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data.decode()


@pytest.mark.parametrize("servername, name", [("mail.example.org", "mail.example.org"),
                                              ("smtp.example.net", "smtp.example.net"),
                                              ("other.test", HOSTNAME), (None, HOSTNAME)])
def test_implicit_tls_greeting_names_the_sni_host(gateway: Gateway, servername: str | None, name: str) -> None:
    with socket.create_connection(("127.0.0.1", gateway.ports["smtps"]), timeout=10) as raw:
        with client_context().wrap_socket(raw, server_hostname=servername) as tls:
            assert read_reply(tls) == f"220 {name} ESMTP mailgate\r\n"
            tls.sendall(b"EHLO client.test\r\n")
            assert read_reply(tls).startswith(f"250-{name}\r\n")


@pytest.mark.parametrize("servername, name", [("mail.example.org", "mail.example.org"), (None, HOSTNAME)])
def test_ehlo_after_starttls_names_the_sni_host(gateway: Gateway, servername: str | None, name: str) -> None:
    with socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=10) as raw:
        assert read_reply(raw).startswith(f"220 {HOSTNAME} ")  # in the clear, nobody has asked for a name
        raw.sendall(b"EHLO client.test\r\n")
        assert read_reply(raw).startswith(f"250-{HOSTNAME}\r\n")
        raw.sendall(b"STARTTLS\r\n")
        assert read_reply(raw).startswith("220 ")
        with client_context().wrap_socket(raw, server_hostname=servername) as tls:
            tls.sendall(b"EHLO client.test\r\n")
            assert read_reply(tls).startswith(f"250-{name}\r\n")
