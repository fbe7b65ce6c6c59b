"""SRS addresses: made, reversed, refused (forged, damaged, expired), never with a "/"."""

from __future__ import annotations

import time

import pytest

from mailgate.core.addresses import normalize_mailbox
from mailgate.mailauth.srs import NotOurs, SenderRewriting

SECRET = "0123456789abcdef-secret"
NOW = 1_800_000_000.0


def srs(now: float = NOW, domain: str = "mx.example.test") -> SenderRewriting:
    return SenderRewriting(SECRET, domain, now=lambda: now)


def test_srs0_made_and_reversed_whatever_the_case() -> None:
    address = srs().forward("alice@example.test")
    assert address is not None and address.startswith("SRS0=") and address.endswith("=example.test=alice@mx.example.test")
    assert srs().reverse(address) == srs().reverse(address.lower()) == "alice@example.test"


def test_srs1_for_another_forwarders_address_goes_back_to_the_first_hop() -> None:
    first = srs(domain="first.test").forward("bob@remote.test")
    assert first is not None
    second = srs().forward(first)
    assert second is not None and second.startswith("SRS1=") and "=first.test==" in second
    assert srs().reverse(second) == first.lower()


def test_forged_damaged_expired_and_foreign_addresses_are_not_ours() -> None:
    address = srs().forward("alice@example.test")
    assert address is not None
    hash_part = address.split("=")[1]
    for bad in (address.replace(hash_part, "AAAA" if hash_part != "AAAA" else "BBBB"),
                address.replace("alice@", "mallory@"), "SRS0=xxxx@mx.example.test", "alice@mx.example.test"):
        with pytest.raises(NotOurs):
            srs().reverse(bad)
    assert srs(NOW + 20 * 86400).reverse(address) == "alice@example.test"
    with pytest.raises(NotOurs, match="timestamp"):
        srs(NOW + 22 * 86400).reverse(address)
    assert not srs().is_srs(address.replace("mx.example.test", "elsewhere.test"))


def test_what_is_not_rewritten() -> None:
    assert srs().forward("") is None  # the null sender
    ours = srs().forward("alice@example.test")
    assert ours is not None and srs().forward(ours) is None  # already ours
    assert srs().forward("x" * 50 + "@example.test") is None  # would pass 64 octets: kept


def test_every_address_made_is_one_smtp_accepts() -> None:
    """srslib's base64 hash may hold "/", which mailgate refuses: ours never does."""
    for index in range(2000):
        address = srs(time.time()).forward(f"user{index}@example.test")
        assert address is not None and "/" not in address and "+" not in address.split("=")[1]
        normalize_mailbox(address)
