"""DKIM keys, signing and verification in process (the independent verifiers: tests/integration/test_dkim_signing.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import dkim
import pytest
from hypothesis import given
from hypothesis import strategies as st
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from mailgate.config import DKIMConfig
from mailgate.mailauth.dkim_canon import relaxed_headers, select_headers, without_b_value
from mailgate.mailauth.dkim_sign import RELAXED, Signer, parse, relaxed_body, sign
from mailgate.mailauth.dkim_verify import check_dkim, signatures
from mailgate.mailauth.keys import KeyProblem, key_problems, load_key, write_new_key
from mailgate.net.dns import Lookups, make_resolver
from tests.support.fake_dns import FakeDNSServer

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: Hi  there\r\n"
           b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nline one   \r\n\r\n\r\n")


def record_of(key_record: str) -> str:
    return key_record.split('"')[1]


def test_keygen_writes_0600_and_never_over_a_file(tmp_path: Path) -> None:
    key = write_new_key(str(tmp_path), "example.test", "s1", "rsa")
    assert os.stat(key.path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "example.test").st_mode & 0o777 == 0o700
    assert key.dns_record().startswith('s1._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p=MIIB')
    with pytest.raises(FileExistsError):
        write_new_key(str(tmp_path), "example.test", "s1", "ed25519")
    ed = write_new_key(str(tmp_path), "example.test", "e1", "ed25519")
    assert len(ed.public_value()) == 44  # base64 of the 32-byte public key (RFC 8463 4.2)


def test_unusable_key_files_are_problems_naming_them(tmp_path: Path) -> None:
    directory = tmp_path / "example.test"
    directory.mkdir()
    (directory / "garbage.pem").write_text("not a key\n")
    small = subprocess.run(["openssl", "genrsa", "768"], capture_output=True, check=True).stdout  # cryptography won't
    (directory / "small.pem").write_bytes(small)
    curve = ec.generate_private_key(ec.SECP256R1())
    (directory / "ec.pem").write_bytes(curve.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "gone.pem").symlink_to(tmp_path / "nowhere")
    (directory / "notes.txt").write_text("ignored")
    problems = key_problems(str(tmp_path))
    assert [problem.split(": ")[1].rsplit("/", 1)[1] for problem in problems] == [
        "ec.pem", "garbage.pem", "gone.pem", "small.pem"]
    assert all(problem.startswith("dkim.keys_dir: ") for problem in problems)
    assert key_problems(str(tmp_path / "missing")) == []
    with pytest.raises(KeyProblem, match="cannot read"):
        load_key(str(directory / "gone.pem"), "example.test", "gone")


def test_the_signer_follows_the_keys_directory(tmp_path: Path) -> None:
    signer = Signer(DKIMConfig(keys_dir=str(tmp_path)))
    assert signer.fields(MESSAGE) == []  # no key: not signed
    write_new_key(str(tmp_path), "example.test", "old", "rsa")
    assert len(signer.fields(MESSAGE)) == 1
    write_new_key(str(tmp_path), "example.test", "new", "ed25519")
    assert [b"s=new;" in f or b"s=old;" in f for f in signer.fields(MESSAGE)] == [True, True]
    os.unlink(tmp_path / "example.test" / "old.pem")
    [field] = signer.fields(MESSAGE)
    assert b"s=new;" in field and b"a=ed25519-sha256;" in field
    assert signer.fields(MESSAGE.replace(b"example.test", b"../../etc")) == []  # never a path
    assert Signer(DKIMConfig(keys_dir=str(tmp_path), sign="off")).fields(MESSAGE) == []


def test_a_header_no_verifier_could_read_goes_unsigned(tmp_path: Path) -> None:
    write_new_key(str(tmp_path), "example.test", "sel", "ed25519")
    signer = Signer(DKIMConfig(keys_dir=str(tmp_path)))
    assert len(signer.fields(MESSAGE)) == 1
    broken = MESSAGE.replace(b"\r\n\r\n", b"\r\nSubject : no colon after the name\r\n\r\n", 1)
    assert broken != MESSAGE
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        assert signer.fields(broken) == []
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert any("not signed" in formatEvent(event) for event in logged)


class VerificationTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        # Not self.mktemp(): under pytest it writes into the working tree.
        self.keys = tempfile.mkdtemp(prefix="mailgate-dkim-")
        self.addCleanup(shutil.rmtree, self.keys, True)
        self.rsa = write_new_key(self.keys, "example.test", "s1", "rsa")
        self.ed = write_new_key(self.keys, "example.test", "e1", "ed25519")
        self.dns = FakeDNSServer({
            "s1._domainkey.example.test": {"TXT": [record_of(self.rsa.dns_record())]},
            "e1._domainkey.example.test": {"TXT": [record_of(self.ed.dns_record())]},
        }).start()
        self.addCleanup(self.dns.stop)
        self.dns.fail("gone._domainkey.example.test", "timeout")
        self.lookups = Lookups(make_resolver([self.dns.nameserver], reactor, timeouts=(0.5,)), 0.5, reactor)

    async def verdicts(self, message: bytes) -> list[tuple[str, str]]:
        results = await check_dkim(self.lookups, message, maybeDeferred)
        return [(result.result, result.selector) for result in results]

    async def test_every_signature_is_verified(self) -> None:
        signed = b"".join(sign(MESSAGE, [self.rsa, self.ed], ["from", "to", "subject"])) + MESSAGE
        self.assertEqual(await self.verdicts(signed), [("pass", "s1"), ("pass", "e1")])
        self.assertEqual(await self.verdicts(signed.replace(b"line one", b"line two")), [("fail", "s1"), ("fail", "e1")])
        self.assertEqual(await self.verdicts(MESSAGE), [])

    async def test_keys_missing_slow_and_algorithms_refused(self) -> None:
        [field] = sign(MESSAGE, [self.rsa], ["from"])
        self.assertEqual(await self.verdicts(field.replace(b"s=s1", b"s=nokey") + MESSAGE), [("permerror", "nokey")])
        self.assertEqual(await self.verdicts(field.replace(b"s=s1", b"s=gone") + MESSAGE), [("temperror", "gone")])
        sha1 = field.replace(b"a=rsa-sha256", b"a=rsa-sha1")
        self.assertEqual(await self.verdicts(sha1 + MESSAGE), [("permerror", "s1")])  # RFC 8301
        self.assertEqual(await self.verdicts(b"DKIM-Signature: v=1; d=example.test; s=s1\r\n" + MESSAGE),
                         [("permerror", "s1")])
        self.assertEqual([s.problem for s in signatures(b"DKIM-Signature: garbage\r\n" + MESSAGE)][0][:9], "malformed")


@given(st.lists(st.sampled_from([b" ", b"  ", b"\t", b"a", b"bc", b"\r\n", b"\r", b"\n", b" \r\n"]), max_size=40))
def test_relaxed_body_is_dkimpys_byte_for_byte(parts: list[bytes]) -> None:
    body = b"".join(parts)
    assert relaxed_body(body) == RELAXED.canonicalize_body(body)


_HEADER_LINES = st.sampled_from([b"From: a@b.test", b"Subject: x", b" folded", b"\tfolded", b"From someone",
                                 b"bad line"])
_BODY_LINES = st.sampled_from([b"", b"", b"body  text ", b"a\rb", b"\r", b".dot", b"Subject: not a field"])
_ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


@given(st.lists(st.tuples(_HEADER_LINES, _ENDS), max_size=5), st.booleans(),
       st.lists(st.tuples(_BODY_LINES, _ENDS), max_size=8))
def test_parse_is_dkimpys_rfc822_parse(header: list[tuple[bytes, bytes]], blank: bool,
                                       body: list[tuple[bytes, bytes]]) -> None:
    message = b"".join(line + end for line, end in [*header, *([(b"", b"\r\n")] if blank else []), *body])
    try:
        expected = dkim.rfc822_parse(message)
    except Exception as error:  # noqa: BLE001 - whatever dkimpy raises, parse raises too
        with pytest.raises(type(error)):
            parse(message)
        return
    assert parse(message) == expected


_B_TAG_PARTS = st.sampled_from([b";", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\x0b", b"b", b"=", b"A", b"h", b"/", b"-",
                                b"b=", b" b=", b";b=", b"; b =\r\n "])


@given(st.lists(_B_TAG_PARTS, max_size=30))
def test_without_b_value_is_dkimpys_re_btag(parts: list[bytes]) -> None:
    value = b"".join(parts)
    assert without_b_value(value) == dkim.RE_BTAG.sub(b"\\1", value)


@given(st.lists(st.sampled_from([b"From", b"from", b"To", b"Subject", b"X-A"]), max_size=8),
       st.lists(st.sampled_from([b"from", b"to", b"subject", b"x-a", b"cc"]), max_size=10))
def test_select_headers_is_dkimpys(names: list[bytes], signed: list[bytes]) -> None:
    headers = [[name, b" %d\r\n" % index] for index, name in enumerate(names)]
    assert select_headers(headers, signed) == dkim.select_headers(headers, signed)


_HEADER_VALUE_PARTS = st.sampled_from([b" ", b"  ", b"\t", b"\r\n", b"\r\n ", b"\n\t", b"\r", b"\n", b"a", b"B c",
                                       b"\x0b", b"\x0c"])


@given(st.lists(st.tuples(st.sampled_from([b"Subject", b"X-Y ", b"from"]),
                          st.lists(_HEADER_VALUE_PARTS, max_size=12).map(b"".join)), max_size=4))
def test_relaxed_headers_is_dkimpys(headers: list[tuple[bytes, bytes]]) -> None:
    assert relaxed_headers(headers) == RELAXED.canonicalize_headers(headers)
