"""DKIM public keys: a key record (RFC 6376 3.6.1) read into an OpenSSL key, once per distinct record.

A record is read as dkimpy's `dkim.evaluate_pk` reads it (the same tags,
defaults and refusals: v= other than DKIM1, k= other than rsa or ed25519,
an unknown s= service type, a p= that is not a key), but the key itself
is loaded by OpenSSL through `cryptography` (`load_der_public_key` takes
both a SubjectPublicKeyInfo and a bare RSAPublicKey, as dkimpy's ASN.1
parser does), and the signature is checked by OpenSSL too: dkimpy's RSA
is pure Python (its ASN.1 parser, `pow` on Python integers, `int2str`).

Records are few (one per sender's selector) and messages many: the
reading is kept per record in a bounded LRU cache (RecordCache), so a sender's
next message costs a dictionary look-up, not a parse.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

MIN_RSA_BITS = 1024  # RFC 8301 3.2: a smaller key verifies nothing
SERVICES = (b"*", b"email", b"tlsrpt")  # dkimpy's: s=tlsrpt keys sign only TLS reports (RFC 8460)
_PKCS1 = padding.PKCS1v15()
_SHA256 = Prehashed(hashes.SHA256())


class KeyRecordProblem(ValueError):
    """The record gives no usable key; str() says why (the result is `permerror`)."""


@dataclass(frozen=True)
class PublicKey:
    """One record's key: RSA or Ed25519, its size in bits, and whether it is for TLS reports only."""

    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    bits: int
    tlsrpt_only: bool = False

    @property
    def kind(self) -> str:
        return "ed25519" if isinstance(self.key, ed25519.Ed25519PublicKey) else "rsa"

    def verifies(self, digest: bytes, signature: bytes) -> bool:
        """Whether `signature` signs the SHA-256 `digest`: RSASSA-PKCS1-v1_5 (RFC 6376 3.3.1), or Ed25519
        over the digest itself (RFC 8463 3)."""
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, digest)
            else:
                # dkimpy reads b= as a number: one with its leading zero bytes left out verifies there too
                size = (self.bits + 7) // 8
                self.key.verify(signature.rjust(size, b"\0"), digest, _PKCS1, _SHA256)
        except InvalidSignature:
            return False
        return True


def read_record(record: bytes) -> PublicKey:
    """The key of a TXT record's text; KeyRecordProblem when it has none that can be used."""
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList as error:
        raise KeyRecordProblem(f"malformed key record: {error}") from None
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise KeyRecordProblem("bad version")
    service = tags.get(b"s", b"*")
    if service not in SERVICES:
        raise KeyRecordProblem(f"unknown service type in s= tag: {service.decode('ascii', 'replace')}")
    if b"p" not in tags:  # dkimpy's words, whatever k= says
        raise KeyRecordProblem("incomplete RSA public key: no p=")
    kind = tags.get(b"k", b"rsa")
    try:
        data = base64.b64decode(tags[b"p"])
    except binascii.Error as error:
        raise KeyRecordProblem(f"p= is not base64: {error}") from None
    if kind == b"ed25519":
        key = _ed25519(data)
    elif kind == b"rsa":
        key = _rsa(data)
    else:
        raise KeyRecordProblem(f"unknown algorithm in k= tag: {kind.decode('ascii', 'replace')}")
    return key if service != b"tlsrpt" else PublicKey(key.key, key.bits, tlsrpt_only=True)


def _ed25519(data: bytes) -> PublicKey:
    if len(data) != 32:
        raise KeyRecordProblem(f"could not parse ed25519 public key: {len(data)} bytes, not 32")
    return PublicKey(ed25519.Ed25519PublicKey.from_public_bytes(data), 256)


def _rsa(data: bytes) -> PublicKey:
    if not data:
        raise KeyRecordProblem("revoked: empty p=")  # RFC 6376 3.6.1
    try:
        key = serialization.load_der_public_key(data)
    except ValueError:
        raise KeyRecordProblem("could not parse RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordProblem(f"could not parse RSA public key: a {type(key).__name__}")
    return PublicKey(key, key.key_size)


class RecordCache:
    """read_record's answers (a key or its problem) for the `max_entries` records used last
    (functools.lru_cache: safe from several threads, and verification may run in the pool)."""

    def __init__(self, max_entries: int = 1000) -> None:
        self._reading = functools.lru_cache(maxsize=max_entries)(_reading)

    def key(self, record: bytes) -> PublicKey:
        """read_record(record), read once: KeyRecordProblem as it does."""
        found = self._reading(record)
        if isinstance(found, str):
            raise KeyRecordProblem(found)
        return found


def _reading(record: bytes) -> PublicKey | str:
    """A key, or why there is none."""
    try:
        return read_record(record)
    except KeyRecordProblem as problem:
        return str(problem)


RECORDS = RecordCache()
