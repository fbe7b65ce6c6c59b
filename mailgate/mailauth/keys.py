"""DKIM signing keys on disk: `<keys_dir>/<domain>/<selector>.pem`, loaded, checked, made, and their DNS record.

A key file is a PEM private key (PKCS#8; a PKCS#1 RSA key from
opendkim-genkey or openssl loads too): RSA of 1024 bits or more (RFC
8301; 2048 made by default), or Ed25519 (RFC 8463). Its DNS record is
`<selector>._domainkey.<domain>` TXT `v=DKIM1; k=rsa|ed25519; p=...`,
with `p` the base64 of the SubjectPublicKeyInfo (RSA, RFC 6376 3.6.1) or
of the 32-byte public key (Ed25519, RFC 8463 4.2). Directory entries that
are not `<selector>.pem` (temporary files, notes, a `.pem.old`) are
ignored; an entry that is one but cannot be read or parsed is an error
naming the file, never a silently unsigned domain.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mailgate.core.addresses import AddressError, normalize_domain
from mailgate.store.durable import giveable, inherited_owner, make_directories, replace_file

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048
MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must not accept less
DEFAULT_SELECTOR = "mailgate"
KEY_MODE, DIRECTORY_MODE = 0o600, 0o700
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyProblem(ValueError):
    """A key file that cannot be used; str() names the file and says why."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    path: str
    private: PrivateKey

    @property
    def algorithm(self) -> str:
        return "ed25519" if isinstance(self.private, ed25519.Ed25519PrivateKey) else "rsa"

    @property
    def signature_algorithm(self) -> bytes:
        """The DKIM-Signature a= tag."""
        return b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest: RSASSA-PKCS1-v1_5 (RFC 6376 3.3.1), or Ed25519 of the digest (RFC 8463 3)."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(digest)
        return self.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))

    def public_value(self) -> str:
        """The record's p= value."""
        public = self.private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(raw).decode("ascii")

    def dns_record(self) -> str:
        """The record to publish, one line in zone-file form."""
        return (f'{self.selector}._domainkey.{self.domain}. IN TXT '
                f'"v=DKIM1; k={self.algorithm}; p={self.public_value()}"')


def is_selector(name: str) -> bool:
    return _SELECTOR.fullmatch(name) is not None


def key_domain(text: str) -> str | None:
    """`text` as a key directory's domain name, or None when it cannot name one (a path stays out)."""
    try:
        domain = normalize_domain(text)
    except AddressError:
        return None
    return domain


def key_files(keys_dir: str, domain: str) -> list[tuple[str, str]]:
    """(selector, path) of every `<selector>.pem` in the domain's directory, by selector."""
    directory = os.path.join(keys_dir, domain)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as error:
        raise KeyProblem(f"{directory}: cannot list: {error.strerror}") from None
    found = [(name[:-4], os.path.join(directory, name)) for name in names
             if name.endswith(".pem") and is_selector(name[:-4])]
    return sorted(found)


def load_key(path: str, domain: str, selector: str) -> SigningKey:
    """The key in one file; KeyProblem naming the file when it is missing, unreadable or not a signing key."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise KeyProblem(f"{path}: cannot read: {error.strerror}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyProblem(f"{path}: not an unencrypted PEM private key") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"{path}: RSA key of {private.key_size} bits; DKIM needs {MIN_RSA_BITS} or more")
    elif not isinstance(private, ed25519.Ed25519PrivateKey):
        raise KeyProblem(f"{path}: a {type(private).__name__}; DKIM keys are RSA or Ed25519")
    return SigningKey(domain, selector, path, private)


def domain_keys(keys_dir: str, domain: str) -> list[SigningKey]:
    """Every key of one domain (KeyProblem at the first bad file)."""
    return [load_key(path, domain, selector) for selector, path in key_files(keys_dir, domain)]


def key_problems(keys_dir: str) -> list[str]:
    """One line per unusable key file (or unreadable directory) under keys_dir; [] when all load."""
    try:
        entries = sorted(os.listdir(keys_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as error:
        return [f"dkim.keys_dir: {keys_dir}: cannot list: {error.strerror}"]
    problems = []
    for entry in entries:
        domain = key_domain(entry)
        if domain is None or not os.path.isdir(os.path.join(keys_dir, entry)):
            continue
        try:
            selectors = key_files(keys_dir, entry)
        except KeyProblem as problem:
            problems.append(f"dkim.keys_dir: {problem}")
            continue
        for selector, path in selectors:
            try:
                load_key(path, domain, selector)
            except KeyProblem as problem:
                problems.append(f"dkim.keys_dir: {problem}")
    return problems


def generate(algorithm: str) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def write_new_key(keys_dir: str, domain: str, selector: str, algorithm: str) -> SigningKey:
    """Make a key and write it as `<keys_dir>/<domain>/<selector>.pem`, mode 0600; never over a file.

    FileExistsError when the file is there. As for the users file, what is
    made (directories, the key) belongs to the owner of the directory it is
    made in, when this process may give it away (root): `mailgate dkim
    keygen` run as root beside a server started with --uid must not lock
    the server out of its keys.
    """
    directory = os.path.join(keys_dir, domain)
    path = os.path.join(directory, f"{selector}.pem")
    if os.path.lexists(path):
        raise FileExistsError(17, "File exists", path)
    owner = giveable(inherited_owner(directory))  # the directories made get it too, so the key's is the same
    make_directories(directory, DIRECTORY_MODE, owner)
    private = generate(algorithm)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    replace_file(path, pem, KEY_MODE, owner=owner, exclusive=True)
    return SigningKey(domain, selector, path, private)

