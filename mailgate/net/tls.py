"""TLS server credentials: the self-signed fallback certificate and the context factory."""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import INegotiated, ISSLTransport
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOProtocol

from mailgate.store.durable import Owner, replace_file

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


class TLSLoadError(ValueError):
    """The configured pair can't be served; `which` is "certificate", "key" or "ciphers"."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


def ensure_certificate(cert_path: str, key_path: str, hostname: str, owner: Owner | None = None) -> bool:
    """Make a self-signed pair when neither file exists; True when it did.

    The contract says a fresh install must start with TLS working. Only
    both-missing counts as fresh: with one of the two present the other is
    a mistake for the operator to fix (a typo in a path must never replace
    a real certificate), so FileExistsError names the one present. Files
    are linked into place, so even a race never overwrites one; their
    directories must exist. `owner` (uid, gid) is who gets both files.
    """
    present = [path for path in (cert_path, key_path) if os.path.lexists(path)]
    if len(present) == 2:
        return False
    if present:
        raise FileExistsError(errno.EEXIST, "exists without its pair", present[0])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_certificate(key, hostname)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    replace_file(key_path, key_pem, mode=0o600, owner=owner, exclusive=True)
    try:
        replace_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, owner=owner,
                     exclusive=True)
    except BaseException:
        os.unlink(key_path)  # ours, a moment old: a lone key would stop the next start
        raise
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
    string (`tls.ciphers`). Everything is loaded and checked here, the
    OpenSSL context included, so an unreadable file, a key that is not the
    certificate's or a cipher string OpenSSL can't use is a TLSLoadError at
    start-up, not a failed handshake later.
    """
    chain: list[x509.Certificate] = _load("certificate", cert_path, x509.load_pem_x509_certificates)
    key: PrivateKeyTypes = _load("key", key_path, lambda data: serialization.load_pem_private_key(data, None))
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise TLSLoadError("key", f"{key_path} is not the private key of the certificate in {cert_path}")
    try:
        # cryptography objects go straight to pyOpenSSL's Context, which
        # deprecates its own X509/PKey wrappers; Twisted only passes them on.
        options = CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=chain[0],  # type: ignore[arg-type]
            extraCertChain=chain[1:],  # type: ignore[arg-type]
            raiseMinimumTo=TLSVersion.TLSv1_2,
            acceptableCiphers=_acceptable_ciphers(ciphers),
        )
    except ValueError as error:  # "Supplied IAcceptableCiphers yielded no usable ciphers ..."
        raise TLSLoadError("ciphers", f"{ciphers!r}: {error}") from None
    try:
        options.getContext()
    except SSL.Error as error:  # "no cipher match", "ee key too small", ...
        which, what = ("ciphers", repr(ciphers)) if "cipher" in str(error) else ("certificate", cert_path)
        raise TLSLoadError(which, f"{what}: OpenSSL refuses it: {error}") from None
    return options


def _load(which: str, path: str, parse: Callable[[bytes], Any]) -> Any:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise TLSLoadError(which, f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return parse(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: a key with a passphrase
        what = "a PEM certificate" if which == "certificate" else "an unencrypted PEM private key"
        raise TLSLoadError(which, f"{path}: not {what}") from None


def _public_der(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


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
