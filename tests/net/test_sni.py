"""SNI names: which configured name a requested one falls under, and pairs that can't be served."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.app.preflight import load_tls
from mailgate.config import ConfigError, parse_config
from mailgate.net.sni import match
from mailgate.net.tls import ensure_certificate

NAMES = {"mail.example.org", "*.example.net", "exact.example.net"}


@pytest.mark.parametrize("requested, matched", [
    ("mail.example.org", "mail.example.org"), ("MAIL.example.org.", "mail.example.org"),
    ("a.example.net", "*.example.net"), ("exact.example.net", "exact.example.net"),
    ("a.b.example.net", None), ("example.net", None), ("example.org", None), ("", None), (None, None),
    ("x" * 300, None),
])
def test_match(requested: str | None, matched: str | None) -> None:
    assert match(requested, NAMES) == matched


def config(tmp_path: Path, sni: dict) -> object:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_certificate(str(cert), str(key), "mx.example.test")
    return parse_config({
        "listen": [{"name": "smtps", "protocol": "smtp", "endpoint": "tcp:4650", "tls": "implicit"}],
        "tls": {"certificate": str(cert), "key": str(key), "sni": sni},
    })


def test_a_pair_that_cannot_be_served_is_a_config_error_naming_it(tmp_path: Path) -> None:
    other_cert, other_key = tmp_path / "o.pem", tmp_path / "o.key"
    ensure_certificate(str(other_cert), str(other_key), "mail.example.org")
    document = config(tmp_path, {"mail.example.org": {"certificate": str(other_cert), "key": str(tmp_path / "key.pem")},
                                 "*.example.net": {"certificate": str(tmp_path / "missing.pem"), "key": str(other_key)}})
    with pytest.raises(ConfigError) as raised:
        load_tls(document)
    problems = sorted(raised.value.problems)
    assert problems[0].startswith('tls.sni."*.example.net".certificate: ') and "cannot read" in problems[0]
    assert problems[1].startswith('tls.sni."mail.example.org".key: ') and "not the private key" in problems[1]


@pytest.mark.parametrize("sni, problem", [
    ({"not a name": {"certificate": "c", "key": "k"}}, "tls.sni"),
    ({"mail.example.org": {"certificate": "c"}}, "key"),
    ({"*.*.example.org": {"certificate": "c", "key": "k"}}, "tls.sni"),
])
def test_bad_tables_are_refused(tmp_path: Path, sni: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(tmp_path, sni)
    assert any(problem in line for line in raised.value.problems), raised.value.problems
