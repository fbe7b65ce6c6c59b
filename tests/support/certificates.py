"""A test certificate authority (trustme): server certificates for fake MX, smarthost and HTTPS hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.ssl import CertificateOptions


class CertificateAuthority:
    """One CA per test; `server_options(name)` serves a certificate it issued for `name`."""

    def __init__(self) -> None:
        self.ca = trustme.CA()

    def write_ca(self, path: Path) -> str:
        """The CA certificate as PEM at `path` (for relay.mta_sts_ca_file)."""
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def server_options(self, *names: str, chain_with_ca: bool = False) -> CertificateOptions:
        """Twisted server options for a certificate of `names` (IP addresses too), this CA's."""
        leaf = self.ca.issue_cert(*names)
        certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        chain = [x509.load_pem_x509_certificate(pem.bytes()) for pem in leaf.cert_chain_pems[1:]]
        if chain_with_ca:  # DANE-TA(2) needs the trust anchor in the chain the server sends
            chain.append(self.certificate())
        return CertificateOptions(privateKey=key, certificate=certificate,  # type: ignore[arg-type]
                                  extraCertChain=chain)  # type: ignore[arg-type]

    def leaf(self, *names: str) -> tuple[x509.Certificate, Any]:
        """(certificate, server options) for `names`: tests build TLSA records from the certificate."""
        leaf = self.ca.issue_cert(*names)
        certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        return certificate, CertificateOptions(privateKey=key, certificate=certificate)  # type: ignore[arg-type]

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
