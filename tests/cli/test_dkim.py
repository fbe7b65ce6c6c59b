"""`mailgate dkim keygen|dns`: the installed console script, end to end."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from mailgate.mailauth.keys import load_key
from tests.support.gateway import BIN

CONFIG = '[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:2525:interface=127.0.0.1"\n'
RECORD = re.compile(r'(\S+)\._domainkey\.(\S+)\. IN TXT "v=DKIM1; k=(rsa|ed25519); p=([A-Za-z0-9+/=]+)"')


def mailgate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (root / "mailgate.toml").write_text(CONFIG)
    return subprocess.run([str(BIN / "mailgate"), "--config", "mailgate.toml", "dkim", *args], cwd=root,
                          capture_output=True, text=True, timeout=60, check=False)


def test_keygen_prints_the_record_and_writes_a_private_key(tmp_path: Path) -> None:
    done = mailgate(tmp_path, "keygen", "Example.TEST")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    match = RECORD.fullmatch(line)
    assert match is not None and match.groups()[:3] == ("mailgate", "example.test", "rsa"), line
    path = tmp_path / "var" / "dkim" / "example.test" / "mailgate.pem"
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = load_key(str(path), "example.test", "mailgate")
    assert key.algorithm == "rsa" and key.private.key_size == 2048  # type: ignore[union-attr]
    assert key.public_value() == match[4]


def test_keygen_never_overwrites_and_dns_lists_every_selector(tmp_path: Path) -> None:
    assert mailgate(tmp_path, "keygen", "example.test", "--selector", "s1").returncode == 0
    before = (tmp_path / "var" / "dkim" / "example.test" / "s1.pem").read_bytes()
    again = mailgate(tmp_path, "keygen", "example.test", "--selector", "s1", "--algorithm", "ed25519")
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip() == ("mailgate: var/dkim/example.test/s1.pem exists: not replaced "
                                    "(choose another --selector to rotate keys)")
    assert (tmp_path / "var" / "dkim" / "example.test" / "s1.pem").read_bytes() == before
    assert mailgate(tmp_path, "keygen", "example.test", "--selector", "e1", "--algorithm", "ed25519").returncode == 0
    listed = mailgate(tmp_path, "dns", "example.test")
    assert listed.returncode == 0
    assert [RECORD.fullmatch(line)[3] for line in listed.stdout.splitlines()] == ["ed25519", "rsa"]  # type: ignore
    none = mailgate(tmp_path, "dns", "other.test")
    assert none.returncode == 1 and "no DKIM keys for other.test" in none.stderr


def test_bad_names_are_refused_in_one_line(tmp_path: Path) -> None:
    for args in (("keygen", "../etc"), ("keygen", "example.test", "--selector", "a/b"), ("dns", "not a domain")):
        done = mailgate(tmp_path, *args)
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "etc").exists()
