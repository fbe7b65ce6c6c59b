"""mailgate.app.certificates: a renewed pair is served at the next check, a broken one is refused once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, maybeDeferred

from mailgate.app import preflight
from mailgate.app.certificates import CertificateWatch
from mailgate.config import parse_config
from mailgate.net.tls import ensure_certificate
from mailgate.net.tls_reload import ReloadableTLS
from tests.support.logs import pytest_log_lines


def run_now(function: Any, *args: Any) -> Deferred:
    """The disk pool, here the caller's thread: each check finishes before it returns."""
    return maybeDeferred(function, *args)


def served_subject(tls: ReloadableTLS) -> str:
    """The CN of the certificate new handshakes get (CertificateOptions keeps it as `certificate`)."""
    options: Any = tls.current
    [name] = options.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(name.value)


def renew(directory: Path, hostname: str, into: Path) -> None:
    """A new pair written beside the old, then moved over it, key first (as certbot's deploy does)."""
    fresh = directory / hostname
    fresh.mkdir()
    ensure_certificate(str(fresh / "cert.pem"), str(fresh / "key.pem"), hostname)
    os.replace(fresh / "key.pem", into / "key.pem")
    os.replace(fresh / "cert.pem", into / "cert.pem")


def test_a_renewed_pair_is_served_and_a_broken_one_is_refused_once(tmp_path: Path, request: Any) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ensure_certificate(str(tls_dir / "cert.pem"), str(tls_dir / "key.pem"), "first.test")
    config = parse_config({"server": {"hostname": "mx.example.test"},
                           "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
                           "tls": {"certificate": str(tls_dir / "cert.pem"), "key": str(tls_dir / "key.pem")}})
    tls = ReloadableTLS(preflight.load_tls(config))
    watch = CertificateWatch(tls, lambda: config, run_now)
    assert watch.check() is None  # unchanged: nothing read
    renew(tmp_path, "renewed.test", tls_dir)
    watch.check()
    assert served_subject(tls) == "renewed.test"

    (tls_dir / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nhalf written\n")
    log = pytest_log_lines(request)
    watch.check()
    watch.check()  # the same broken files: not read, not logged again
    refused = log.matching("new TLS sessions still get the certificate loaded before")
    assert len(refused) == 1 and refused[0].startswith("tls: tls.certificate: "), refused
    assert served_subject(tls) == "renewed.test"
