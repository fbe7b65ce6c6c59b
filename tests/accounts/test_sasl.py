"""Tests for mailgate.accounts.sasl: SASL response lines and the PLAIN message (RFC 4616)."""

from __future__ import annotations

import base64

import pytest

from mailgate.accounts.sasl import (
    SASLAuthzidRefused,
    SASLBadBase64,
    SASLCancelled,
    SASLMalformed,
    decode_response,
    parse_plain,
)


@pytest.mark.parametrize("line", ["*", " *\r", b"*", b"* "])
def test_star_cancels(line: str | bytes) -> None:
    with pytest.raises(SASLCancelled):
        decode_response(line)


@pytest.mark.parametrize("line", ["=", b"=", "= "])
def test_equals_is_an_empty_response(line: str | bytes) -> None:
    """RFC 4954 and 5034 section 4: "=" sends an empty initial response (SMTP used to refuse it)."""
    assert decode_response(line) == b""


def test_base64_is_decoded_from_str_or_bytes() -> None:
    token = base64.b64encode(b"\0alice\0pw")
    assert decode_response(token) == b"\0alice\0pw"
    assert decode_response(" " + token.decode() + "\r\n") == b"\0alice\0pw"


@pytest.mark.parametrize("line", ["!!!", b"AGFsaWNl AA==", "AGFsaWNlAA", "é=="])
def test_bad_base64_is_malformed(line: str | bytes) -> None:
    with pytest.raises(SASLBadBase64):
        decode_response(line)
    assert issubclass(SASLBadBase64, SASLMalformed)


def test_plain_message() -> None:
    assert parse_plain(b"\0alice@example.test\0correct horse") == ("alice@example.test", "correct horse")
    assert parse_plain("\0ålice\0pässword".encode()) == ("ålice", "pässword")


def test_authzid_may_name_the_authcid_in_any_case() -> None:
    assert parse_plain(b"Alice@Example.TEST\0alice@example.test\0pw") == ("alice@example.test", "pw")
    assert parse_plain("ÅLICE\0ålice\0pw".encode()) == ("ålice", "pw")  # Unicode case, not just ASCII


def test_another_authzid_is_refused() -> None:
    with pytest.raises(SASLAuthzidRefused):
        parse_plain(b"bob@example.test\0alice@example.test\0pw")
    assert issubclass(SASLAuthzidRefused, SASLMalformed)


@pytest.mark.parametrize("message", [
    b"", b"alice\0pw", b"\0alice\0pw\0", b"\0\0alice\0pw",
    b"\0\0pw",  # empty authcid: SMTP refused it, POP3 tried it as a login
    b"\0alice\0",  # empty passwd: RFC 4616 passwd = 1*SAFE
    b"\0alice\0\xff\xfe",  # not UTF-8: SMTP refused it, POP3 tried it as a login
    b"\0al\xc3ice\0pw",
    b"\xff\0alice\0pw",
])
def test_malformed_plain_messages(message: bytes) -> None:
    with pytest.raises(SASLMalformed):
        parse_plain(message)
