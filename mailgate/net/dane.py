"""DANE TLSA matching (RFC 6698, RFC 7672 section 3) and the client TLS that checks it at the handshake.

Only the usages SMTP may use count: DANE-EE(3), the server's own
certificate or key, with no name or date checks (RFC 7672 3.1.1), and
DANE-TA(2), a certificate in the chain the server sends, which must then
issue a server certificate valid for the MX host name (3.1.2). PKIX-TA(0)
and PKIX-EE(1) records are unusable for SMTP (3.1.3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

DANE_TA, DANE_EE = 2, 3
_MATCHING = {0: None, 1: "sha256", 2: "sha512"}


@dataclass(frozen=True)
class TLSARecord:
    usage: int
    selector: int  # 0: the whole certificate, 1: its SubjectPublicKeyInfo
    matching: int  # 0: exact, 1: SHA-256, 2: SHA-512
    data: bytes

    @classmethod
    def from_wire(cls, rdata: bytes) -> TLSARecord:
        if len(rdata) < 3:
            raise ValueError("TLSA record shorter than 3 octets")
        return cls(rdata[0], rdata[1], rdata[2], rdata[3:])

    @property
    def usable(self) -> bool:
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.matching in _MATCHING

    def matches(self, certificate: x509.Certificate) -> bool:
        if self.selector == 0:
            selected = certificate.public_bytes(serialization.Encoding.DER)
        else:
            selected = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        algorithm = _MATCHING[self.matching]
        return (hashlib.new(algorithm, selected).digest() if algorithm else selected) == self.data


class DANEMismatch(Exception):
    """The server's certificates match none of its usable TLSA records."""


def check_chain(records: Sequence[TLSARecord], chain: Sequence[x509.Certificate], hostname: str) -> str | None:
    """None when the chain the server sent (leaf first) satisfies a usable record; else why not."""
    usable = [record for record in records if record.usable]
    if not chain:
        return "the server sent no certificate"
    if any(r.usage == DANE_EE and r.matches(chain[0]) for r in usable):
        return None
    for anchor in chain[1:]:
        if any(r.usage == DANE_TA and r.matches(anchor) for r in usable):
            problem = _issued_by(anchor, chain, hostname)
            if problem is None:
                return None
            return f"DANE-TA: {problem}"
    return f"the certificate chain matches none of the {len(usable)} usable TLSA record(s)"


def _issued_by(anchor: x509.Certificate, chain: Sequence[x509.Certificate], hostname: str) -> str | None:
    """RFC 7672 3.1.2: the leaf must chain to the TLSA-named anchor (dates checked, the anchor may be an
    intermediate: a partial chain) and be valid for the MX host name (RFC 6125, as service-identity checks)."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    between = [crypto.X509.from_cryptography(c) for c in chain[1:] if c is not anchor]
    try:
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(chain[0]), between).verify_certificate()
    except crypto.X509StoreContextError as error:
        return f"the server certificate does not chain to the matched anchor: {error}"
    try:
        verify_certificate_hostname(chain[0], hostname)
    except (VerificationError, CertificateError) as error:
        return f"the server certificate is not valid for {hostname}: {error}"
    return None


@implementer(IOpenSSLClientConnectionCreator)
class DANEClientCreator:
    """TLS client connections whose handshake fails unless the server's chain matches `records`.

    The chain is checked when the handshake is done (as Twisted's own
    hostname check once was, in its info callback); a mismatch fails the
    connection with DANEMismatch, never lets a byte of mail through.
    """

    def __init__(self, hostname: str, records: Sequence[TLSARecord]) -> None:
        self._hostname, self._records = hostname, tuple(records)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802, N803 - Twisted's interface
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_PEER, lambda *args: True)  # the TLSA records decide, below
        context.set_info_callback(self._handshake_done)
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection

    def _handshake_done(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        problem = check_chain(self._records, chain, self._hostname)
        if problem is not None:
            connection.get_app_data().failVerification(Failure(DANEMismatch(f"DANE: {problem}")))
