"""DKIM signing (RFC 6376, relaxed/relaxed): DKIM-Signature fields for a message, one per key of its domain.

The signature is made of dkimpy's pieces, or of equivalents that give
the same bytes faster (mailgate.mailauth.dkim_canon, which verification
uses too, each property-tested byte for byte against dkimpy's): its
message parser, its relaxed canonicalization, its header selection and
hashing (`dkim.hash_headers`) and its folding, as `dkim.DKIM.sign` uses
them, so what is hashed is what dkimpy's (and every) verifier hashes.
What is done differently:

- the private-key operation is OpenSSL's (through `cryptography`): dkimpy
  computes RSA in pure Python, 7 ms per 2048-bit signature here with the
  GIL held (the whole server stalls meanwhile), against 0.6 ms;
- the body's relaxed canonicalization (`relaxed_body`) replaces only the
  white space that changes, where dkimpy's rewrites every run of it (each
  space between two words): 7.6 ms against 1.0 ms for 100 KB of text;
- the message is split into header fields and body (`parse`) without
  dkimpy's line-by-line split of the body when its lines end with CRLF;
- only the fields h= names are canonicalized, with bytes methods, and b=
  is emptied without dkimpy's backtracking expression (`header_hash`).

Signing blocks (file reads, hashing, the key operation): callers run it in
a thread (`Signer.fields` is safe to call from several at once).

Keys are `mailgate.mailauth.keys` files, re-read when they change: each
call looks at the domain's directory (its entries' names, sizes, dates and
inodes), so a new selector is used, and a removed one dropped, from the
next message on, without a restart. That is how keys rotate: add the new
selector's file (both sign), publish it, remove the old file once its
record may go.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from typing import Sequence

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
from twisted.logger import Logger

from mailgate.config import DKIMConfig
from mailgate.mailauth.dkim_canon import RELAXED, header_hash, parse, relaxed_body
from mailgate.mailauth.headers import from_domains
from mailgate.mailauth.keys import KeyProblem, SigningKey, key_domain, key_files, load_key

log = Logger()

FIELD_NAME = b"DKIM-Signature"
_PLACEHOLDER = b"0" * 60  # dkimpy's: puts b= on a line of its own before the real value is known
Stamp = tuple[tuple[str, int, int, int], ...]


class KeyRing:
    """The keys of each domain under keys_dir, read again when the domain's directory changes."""

    def __init__(self, keys_dir: str) -> None:
        self._keys_dir = keys_dir
        self._cache: dict[str, tuple[Stamp, list[SigningKey]]] = {}
        self._lock = threading.Lock()

    def keys_for(self, domain: str) -> list[SigningKey]:
        """The domain's keys, by selector; [] when it has none (or is not a domain name)."""
        name = key_domain(domain)
        if name is None:
            return []
        stamp = self._stamp(name)
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        keys = self._load(name)
        with self._lock:
            self._cache[name] = (stamp, keys)
        return keys

    def _stamp(self, domain: str) -> Stamp:
        found = []
        try:
            for selector, path in key_files(self._keys_dir, domain):
                try:
                    info = os.stat(path)
                except OSError:
                    found.append((selector, -1, -1, -1))
                    continue
                found.append((selector, info.st_mtime_ns, info.st_size, info.st_ino))
        except KeyProblem:
            return (("", -1, -1, -1),)
        return tuple(found)

    def _load(self, domain: str) -> list[SigningKey]:
        """Every key that loads; a bad file is logged (start-up refuses them: preflight)."""
        keys = []
        try:
            files = key_files(self._keys_dir, domain)
        except KeyProblem as problem:
            log.error("dkim: {problem}; mail from {domain} is not signed", problem=problem, domain=domain)
            return []
        for selector, path in files:
            try:
                keys.append(load_key(path, domain, selector))
            except KeyProblem as problem:
                log.error("dkim: {problem}; not signing with it", problem=problem)
        return keys


class Signer:
    """DKIM-Signature fields for messages, with `[dkim]`'s keys and header list."""

    def __init__(self, settings: DKIMConfig) -> None:
        self.settings = settings
        self.keys = KeyRing(settings.keys_dir)

    def fields(self, message: bytes, domain: str | None = None) -> list[bytes]:
        """One `DKIM-Signature: ...\\r\\n` field per key of `domain` (default: the From: field's one domain).

        [] when signing is off, the domain has no key, From: names no
        single domain, or a header line is not a field (`Subject : x`: no
        verifier could read it either), which is logged: the message goes
        unsigned rather than refused. `message` may end its lines with CRLF or LF.
        """
        if self.settings.sign == "off":
            return []
        if domain is None:
            domains = from_domains(message)
            if len(domains) != 1:
                return []
            domain = domains[0]
        keys = self.keys.keys_for(domain)
        if not keys:
            return []
        try:
            return sign(message, keys, self.settings.headers)
        except dkim.MessageFormatError as error:
            log.warn("dkim: a message from {domain} not signed: {error}", domain=domain, error=error)
            return []


def sign(message: bytes, keys: Sequence[SigningKey], signed_headers: Sequence[str],
         now: float | None = None) -> list[bytes]:
    """DKIM-Signature fields for `message`, one per key: relaxed/relaxed, SHA-256, `signed_headers` that
    are present, From once more (oversigned: a From added on top breaks the signature, RFC 6376 8.15)."""
    raw_headers, body = parse(message)
    present = {bytes(name).decode("ascii", "replace").lower() for name, _ in raw_headers}
    include = [name.encode("ascii") for name in signed_headers if name in present] + [b"from"]
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    timestamp = str(int(time.time() if now is None else now)).encode("ascii")
    fields = []
    for key in keys:
        tags = [(b"v", b"1"), (b"a", key.signature_algorithm), (b"c", b"relaxed/relaxed"),
                (b"d", key.domain.encode("ascii")), (b"s", key.selector.encode("ascii")), (b"t", timestamp),
                (b"h", b":".join(include)), (b"bh", body_hash), (b"b", _PLACEHOLDER)]
        digest = header_hash(RELAXED, raw_headers, include, (FIELD_NAME, b" " + _folded(tags)))
        tags[-1] = (b"b", base64.b64encode(key.sign_digest(digest)))
        fields.append(FIELD_NAME + b": " + _folded(tags, b"\r\n"))
    return fields


def _folded(tags: list[tuple[bytes, bytes]], end: bytes = b"") -> bytes:
    return bytes(dkim.fold(b"; ".join(b"=".join(tag) for tag in tags) + end, namelen=len(FIELD_NAME),
                           linesep=b"\r\n"))
