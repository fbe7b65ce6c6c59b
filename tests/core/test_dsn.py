"""RFC 3461 parameter rules: xtext both ways, NOTIFY, ORCPT, RET, ENVID, what NOTIFY asks for."""

from __future__ import annotations

import pytest

from mailgate.core.dsn import (
    DSNError, DSNRequest, check_envid, check_notify, check_orcpt, check_ret, original_recipient, wants,
    xtext_decode, xtext_encode,
)


@pytest.mark.parametrize("text", ["plain", "a+b=c", "josé@example.test", "sp ace", ""])
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii() and "=" not in encoded and " " not in encoded
    assert xtext_decode(encoded) == text


def test_xtext_encode_examples() -> None:
    assert xtext_encode("a+b=c") == "a+2Bb+3Dc"
    assert xtext_decode("bob+2Bx@remote.test") == "bob+x@remote.test"


@pytest.mark.parametrize("value, checked", [("never", "NEVER"), ("SUCCESS", "SUCCESS"),
                                            ("success,failure,delay", "SUCCESS,FAILURE,DELAY")])
def test_notify_accepted(value: str, checked: str) -> None:
    assert check_notify(value) == checked


@pytest.mark.parametrize("value", [None, "", "NEVER,SUCCESS", "SUCCESS,SUCCESS", "ALWAYS", "SUCCESS,", ","])
def test_notify_refused(value: str | None) -> None:
    with pytest.raises(DSNError):
        check_notify(value)


@pytest.mark.parametrize("value", ["rfc822;bob@remote.test", "utf-8;jos+C3+A9@example.test", "x-type;a+2Bb"])
def test_orcpt_accepted(value: str) -> None:
    assert check_orcpt(value) == value


@pytest.mark.parametrize("value", [None, "", "bob@remote.test", ";bob@x", "rfc822;", "rfc822;a+zz",
                                   "rfc822;" + "a" * 500, "-x;a", "rfc822;a+2b"])
def test_orcpt_refused(value: str | None) -> None:
    with pytest.raises(DSNError):
        check_orcpt(value)


def test_ret_and_envid() -> None:
    assert check_ret("hdrs") == "HDRS" and check_ret("FULL") == "FULL"
    assert check_envid("QQ314159+2B") == "QQ314159+2B"
    for bad in (None, "", "BODY"):
        with pytest.raises(DSNError):
            check_ret(bad)
    for bad in (None, "", "a" * 101, "a+q1", "a=b"):
        with pytest.raises(DSNError):
            check_envid(bad)


def test_original_recipient_is_decoded() -> None:
    assert original_recipient("rfc822;bob+2Bx@remote.test") == "rfc822;bob+x@remote.test"
    assert original_recipient(None) is None


@pytest.mark.parametrize("notify, kind, wanted", [
    (None, "FAILURE", True), (None, "DELAY", True), (None, "SUCCESS", False),
    ("NEVER", "FAILURE", False), ("SUCCESS", "FAILURE", False), ("SUCCESS,DELAY", "DELAY", True),
    ("SUCCESS", "SUCCESS", True),
])
def test_wants(notify: str | None, kind: str, wanted: bool) -> None:
    assert wants(notify, kind) is wanted


def test_request_keeps_only_dsn_parameters() -> None:
    request = DSNRequest.of({"SIZE": "10", "RET": "HDRS", "ENVID": "x"},
                            {"a@x.test": {"NOTIFY": "NEVER"}, "b@x.test": {}})
    assert request == DSNRequest(("RET=HDRS", "ENVID=x"), {"a@x.test": ("NOTIFY=NEVER",)})
