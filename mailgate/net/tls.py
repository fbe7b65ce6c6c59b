"""TLS server credentials: the self-signed fallback certificate and the context factory."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.interfaces import INegotiated, ISSLTransport
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOProtocol

from mailgate.store.durable import replace_file

CERTIFICATE_LIFETIME = datetime.timedelta(days=3650)

# `tls.ciphers` profiles: the TLS 1.2 suites offered (TLS 1.3 has only strong ones, always on).
# "intermediate" is Mozilla's profile of that name (ssl-config.mozilla.org, guidelines 5.7):
# ECDHE or DHE key exchange (forward secrecy) and AEAD ciphers only. DHE suites need DH
# parameters, which mailgate does not set, so in practice the ECDHE ones are offered.
# "legacy" is None: Twisted's own default list, what mailgate 0.1 offered, which adds
# static-RSA key exchange and CBC suites (AES128-SHA, ...) for clients that have nothing else.
CIPHER_PROFILES: dict[str, str | None] = {
    "intermediate": (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
    ),
    "legacy": None,
}


def ensure_certificate(cert_path: str, key_path: str, hostname: str) -> bool:
    """Make a self-signed certificate when the configured one is missing.

    The contract says a fresh install must start with TLS working, so a
    missing certificate or key is replaced (both together: a new key needs a
    new certificate). Returns True when files were generated, so the caller
    can log a warning; existing files are never touched.
    """
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return False
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_certificate(key, hostname)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path in (key_path, cert_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Key first: a crash between the two writes leaves the certificate
    # missing, and the next start simply generates a fresh pair.
    replace_file(key_path, key_pem, mode=0o600)
    replace_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return True


def self_signed_certificate(key: rsa.RSAPrivateKey, hostname: str) -> x509.Certificate:
    """Build a server certificate valid for hostname, localhost and 127.0.0.1."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(_alt_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _alt_names(hostname: str) -> list[x509.GeneralName]:
    """SAN entries: clients match only SANs (RFC 6125), never the CN."""
    names: list[x509.GeneralName] = []
    for entry in (hostname, "localhost", "127.0.0.1"):
        if not entry:
            continue
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(entry))
        except ValueError:
            general = x509.DNSName(entry)
        if general not in names:
            names.append(general)
    return names


def server_tls_options(cert_path: str, key_path: str, ciphers: str = "intermediate") -> CertificateOptions:
    """Load PEM files into a Twisted server context factory, TLS 1.2 or newer.

    The certificate file may hold a chain (leaf first); the rest is sent as
    intermediates. `ciphers` is a CIPHER_PROFILES name or an OpenSSL cipher
    string (`tls.ciphers`).
    """
    with open(cert_path, "rb") as handle:
        chain = x509.load_pem_x509_certificates(handle.read())
    with open(key_path, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), password=None)
    # cryptography objects go straight to pyOpenSSL's Context, which
    # deprecates its own X509/PKey wrappers; Twisted only passes them on.
    return CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=_acceptable_ciphers(ciphers),
    )


def _acceptable_ciphers(ciphers: str) -> AcceptableCiphers | None:
    """None (Twisted's default list) for "legacy"; else the profile's or the given OpenSSL string."""
    cipher_string = CIPHER_PROFILES.get(ciphers, ciphers)
    if cipher_string is None:
        return None
    return AcceptableCiphers.fromOpenSSLCipherString(cipher_string)


def is_tls(transport: object) -> bool:
    """Tell whether a transport already encrypts.

    A TCP transport after startTLS provides ISSLTransport; a connection
    wrapped by TLSMemoryBIOFactory (implicit TLS) does not, but its transport
    is a TLSMemoryBIOProtocol, which provides INegotiated.
    """
    return (
        ISSLTransport.providedBy(transport)
        or INegotiated.providedBy(transport)
        or isinstance(transport, TLSMemoryBIOProtocol)
    )
