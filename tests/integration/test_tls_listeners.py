"""TLS as a real `twistd mailgate` serves it: the suites offered, and the certificate pair it loads or makes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.net.tls import ensure_certificate
from tests.support.gateway import Gateway, free_port, tls12_handshake


def pop3s(make_gateway: Callable[..., Gateway], tls: str = "") -> Gateway:
    """A gateway with one implicit-TLS POP3 listener, not started; `tls` goes in its [tls] table."""
    port = free_port()
    listeners = f'[[listen]]\nname = "pop3s"\nprotocol = "pop3"\nendpoint = "tcp:{port}:interface=127.0.0.1"\n' \
                f'tls = "implicit"\n\n[tls]\n{tls}\n'
    gateway = make_gateway((), listeners=listeners)
    gateway.ports = {"pop3s": port}
    return gateway


@pytest.mark.parametrize("suite", ["AES128-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"])
def test_default_refuses_suites_without_forward_secrecy_or_aead(make_gateway, suite: str) -> None:
    gateway = pop3s(make_gateway).start()
    assert tls12_handshake(gateway.ports["pop3s"], suite) == "refused"
    assert tls12_handshake(gateway.ports["pop3s"], "ECDHE-RSA-AES128-GCM-SHA256") == "ECDHE-RSA-AES128-GCM-SHA256"


def test_legacy_ciphers_serve_old_clients(make_gateway) -> None:
    gateway = pop3s(make_gateway, 'ciphers = "legacy"').start()
    assert tls12_handshake(gateway.ports["pop3s"], "AES128-SHA") == "AES128-SHA"
    assert tls12_handshake(gateway.ports["pop3s"], "AES128-GCM-SHA256") == "AES128-GCM-SHA256"


def generate_pair(directory: Path) -> tuple[Path, Path]:
    """A certificate and key the operator put in place (self-signed here, but theirs)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "real-cert.pem", directory / "real-key.pem"
    ensure_certificate(str(cert), str(key), "real.example.test")
    return cert, key


def assert_refused_with(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert [line] == [row for row in result.stderr.splitlines() if row.startswith("tls.")], result.stderr


def test_a_missing_key_beside_a_real_certificate_is_a_config_error(make_gateway, tmp_path: Path) -> None:
    """The typo of issue #12: start-up replaced the operator's certificate and made a key to match."""
    cert, _key = generate_pair(tmp_path / "pki")
    before = cert.read_bytes()
    gateway = pop3s(make_gateway, f'certificate = "{cert}"\nkey = "{tmp_path}/pki/reel-key.pem"')
    assert_refused_with(gateway.run_until_exit(),
                        f"tls.key: {tmp_path}/pki/reel-key.pem does not exist, but tls.certificate {cert} does: "
                        "a self-signed pair is made only when both are missing, and never over a file of yours")
    assert cert.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == ["real-cert.pem", "real-key.pem"]


def test_a_missing_certificate_beside_a_real_key_is_a_config_error(make_gateway, tmp_path: Path) -> None:
    _cert, key = generate_pair(tmp_path / "pki")
    before = key.read_bytes()
    gateway = pop3s(make_gateway, f'certificate = "pki/cert.pem"\nkey = "{key}"')
    assert_refused_with(gateway.run_until_exit(),
                        f"tls.certificate: pki/cert.pem does not exist, but tls.key {key} does: "
                        "a self-signed pair is made only when both are missing, and never over a file of yours")
    assert key.read_bytes() == before


def test_no_directories_are_made_outside_the_run_directory(make_gateway, tmp_path: Path) -> None:
    elsewhere = Path(tempfile.mkdtemp(prefix="mailgate-elsewhere-"))
    try:
        missing = elsewhere / "nonexistent" / "tls"
        gateway = pop3s(make_gateway, f'certificate = "{missing}/cert.pem"\nkey = "{missing}/key.pem"')
        assert_refused_with(gateway.run_until_exit(),
                            f"tls.certificate: directory {missing} does not exist (mailgate makes the directories "
                            f"of a generated certificate only below its run directory, {tmp_path})")
        assert list(elsewhere.iterdir()) == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_fresh_run_directory_gets_a_pair_below_it(make_gateway, tmp_path: Path) -> None:
    gateway = pop3s(make_gateway, 'certificate = "var/tls/cert.pem"\nkey = "var/tls/key.pem"').start()
    assert tls12_handshake(gateway.ports["pop3s"], "ECDHE-RSA-AES128-GCM-SHA256") == "ECDHE-RSA-AES128-GCM-SHA256"
    assert (tmp_path / "var" / "tls" / "cert.pem").exists() and (tmp_path / "var" / "tls" / "key.pem").exists()
    assert "were missing: generated a self-signed pair" in gateway.log()


def test_a_key_that_is_not_the_certificates_stops_start_up(make_gateway, tmp_path: Path) -> None:
    cert, _ = generate_pair(tmp_path / "one")
    _, other_key = generate_pair(tmp_path / "two")
    gateway = pop3s(make_gateway, f'certificate = "{cert}"\nkey = "{other_key}"')
    assert_refused_with(gateway.run_until_exit(),
                        f"tls.key: {other_key} is not the private key of the certificate in {cert}")


FETCHMAIL = shutil.which("fetchmail")


@pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail is not on PATH (.ci/run installs it with apt-get)")
def test_fetchmail_verifies_the_generated_certificate_as_the_readme_says(make_gateway, tmp_path: Path) -> None:
    """The README's recipe: sslcertck with sslcertfile naming a copy of var/tls/cert.pem, by a name it holds."""
    port = free_port()
    gateway = make_gateway((), listeners=f'[[listen]]\nname = "pop3"\nprotocol = "pop3"\n'
                                         f'endpoint = "tcp:{port}:interface=127.0.0.1"\ntls = "starttls"\n')
    gateway.ports = {"pop3": port}
    gateway.add_user("alice@example.test", "pw")
    gateway.start()
    home = tmp_path / "client"
    home.mkdir()
    copy = home / "mailgate-cert.pem"
    shutil.copy(tmp_path / "var" / "tls" / "cert.pem", copy)

    def poll(name: str) -> subprocess.CompletedProcess[str]:
        rc = home / f"{name}.fetchmailrc"
        rc.write_text(f'set no syslog\npoll {name} protocol POP3 port {port}\n'
                      '  user "alice@example.test" there with password "pw" is "alice" here\n'
                      f'  sslproto "tls1.2+" sslcertck sslcertfile {copy}\n')
        rc.chmod(0o600)
        return subprocess.run([FETCHMAIL, "-v", "-c", "-f", str(rc), "--pidfile", str(home / "fetchmail.pid")],
                              env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)},
                              capture_output=True, text=True, timeout=120, check=False)

    trusted = poll("localhost")
    assert trusted.returncode == 1, trusted.stdout + trusted.stderr  # 1: checked, and no mail
    assert "upgrade to TLS succeeded" in trusted.stdout + trusted.stderr
    assert "No mail for alice@example.test" in trusted.stdout + trusted.stderr
    by_address = poll("127.0.0.1")  # fetchmail matches names only, not the certificate's IP entry
    assert "hostname mismatch" in by_address.stdout + by_address.stderr
