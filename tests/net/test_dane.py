"""TLSA matching as RFC 7672 says: DANE-EE(3) and DANE-TA(2), selectors 0/1, matching types 0/1/2."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailgate.net.dane import TLSARecord, check_chain
from tests.support.certificates import CertificateAuthority

HOST = "mx1.remote.test"


def der(certificate: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return certificate.public_bytes(serialization.Encoding.DER)
    return certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def digest(data: bytes, matching: int) -> bytes:
    return {0: lambda d: d, 1: lambda d: hashlib.sha256(d).digest(), 2: lambda d: hashlib.sha512(d).digest()}[
        matching](data)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


def chain_for(ca: CertificateAuthority, name: str = HOST) -> list[x509.Certificate]:
    leaf, _options = ca.leaf(name)
    return [leaf, ca.certificate()]


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("matching", [0, 1, 2])
def test_dane_ee_matches_the_server_certificate_whatever_its_name(ca, selector: int, matching: int) -> None:
    chain = chain_for(ca, "some.other.name")  # DANE-EE: no name check (RFC 7672 3.1.1)
    record = TLSARecord(3, selector, matching, digest(der(chain[0], selector), matching))
    assert check_chain([record], chain[:1], HOST) is None
    assert check_chain([TLSARecord(3, selector, matching, b"\0" * 3)], chain[:1], HOST) is not None


def test_dane_ta_needs_a_leaf_it_issued_for_the_mx_name(ca) -> None:
    record = TLSARecord(2, 1, 1, digest(der(ca.certificate(), 1), 1))
    assert check_chain([record], chain_for(ca), HOST) is None
    assert "not valid for" in (check_chain([record], chain_for(ca, "other.test"), HOST) or "")
    stranger, _ = CertificateAuthority().leaf(HOST)
    assert "does not chain" in (check_chain([record], [stranger, ca.certificate()], HOST) or "")
    assert check_chain([record], chain_for(ca)[:1], HOST) is not None  # the anchor must be sent


def test_pkix_usages_are_unusable_for_smtp(ca) -> None:
    chain = chain_for(ca)
    records = [TLSARecord(1, 0, 0, der(chain[0], 0)), TLSARecord(0, 0, 0, der(chain[1], 0))]
    assert not any(r.usable for r in records)
    assert "none of the 0 usable" in (check_chain(records, chain, HOST) or "")
    assert TLSARecord.from_wire(bytes([3, 1, 1]) + b"xy") == TLSARecord(3, 1, 1, b"xy")
