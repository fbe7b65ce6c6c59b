"""Client TLS that checks certificates: the system's CAs plus extra ones from a PEM file."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet._sslverify import IOpenSSLTrustRoot  # twisted.internet.ssl does not re-export it
from twisted.internet.ssl import optionsForClientTLS
from zope.interface import implementer


@implementer(IOpenSSLTrustRoot)
class TrustRoots:
    """The system's default CAs and, for tests and private setups, those of `extra_pem` (relay.mta_sts_ca_file).

    Read once at construction, so a bad file is a start-up error.
    """

    def __init__(self, extra_pem: str = "") -> None:
        self._extra: list[x509.Certificate] = []
        if extra_pem:
            with open(extra_pem, "rb") as handle:
                self._extra = x509.load_pem_x509_certificates(handle.read())

    def _addCACertsToContext(self, context: SSL.Context) -> None:  # noqa: N802 - Twisted's interface
        context.set_default_verify_paths()
        store = context.get_cert_store()
        assert store is not None
        for certificate in self._extra:
            store.add_cert(crypto.X509.from_cryptography(certificate))


def verifying_options(hostname: str, trust: TrustRoots) -> Any:
    """Client options that need a certificate valid for `hostname`, issued by one of `trust`."""
    return optionsForClientTLS(hostname, trustRoot=trust)
