"""DKIM verification (RFC 6376 6) of every signature of a message: keys from the reactor, the maths by OpenSSL.

The keys are fetched first, all at once, through twisted.names on the
reactor (`relay.nameservers`, `authentication.dns_timeout`); then every
signature is checked, as dkimpy's `DKIM.verify` checks it and with its
pieces (tag parsing and validation, canonicalization, header selection,
the extra From it hashes), but with the public-key work done by OpenSSL
through `cryptography` (mailgate.mailauth.dkim_public_keys: each key
record read once, then kept) and the body canonicalized by
mailgate.mailauth.dkim_canon. dkimpy's RSA is pure Python: on the bench's
1 KB message (bench/mailauth_inprocess.py) its `dkim.verify` takes
1.1 ms, 0.29 of them the RSA-2048 verification and 0.05 reading the key
record, against 0.03 for OpenSSL's verification and a dictionary look-up;
property tests hold the results to dkimpy's (pass exactly when it passes)
for messages signed, then changed.

Results (RFC 8601 2.7.1): `pass`, `fail` (the body or the headers changed,
an expired or future signature), `permerror` (a malformed signature, no
key or an unusable one, rsa-sha1 or an RSA key under 1024 bits: RFC 8301),
`temperror` (the key lookup failed or timed out).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
from dkim.canonicalization import (  # type: ignore[import-untyped]
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Simple,
)
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, DeferredList

from mailgate.mailauth.dkim_canon import header_hash, parse, relaxed_body
from mailgate.mailauth.dkim_public_keys import MIN_RSA_BITS, RECORDS, KeyRecordProblem
from mailgate.mailauth.headers import header_fields
from mailgate.mailauth.results import DKIMResult
from mailgate.net.dns import LookupFailed, Lookups, NoSuchName, lookup_txt

MANDATORY_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
ACCEPTED_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")  # RFC 8301 3.1: rsa-sha1 is not accepted
MAX_SIGNATURES = 10  # checked per message; more is an abuse of the verifier's time
_WSP = re.compile(rb"\s+")
_COLON = re.compile(rb"\s*:\s*")

RunInThread = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Signature:
    """What the reactor needs of one DKIM-Signature field: where its key is, or why it is unusable."""

    domain: str
    selector: str
    problem: str = ""

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


@dataclass(frozen=True)
class KeyAnswer:
    """A key lookup's outcome: the TXT record, or why there is none (`temporary` for temperror)."""

    record: bytes | None = None
    problem: str = ""
    temporary: bool = False


def signatures(message: bytes) -> list[Signature]:
    """Every DKIM-Signature field, top to bottom (dkimpy's index order), read enough to find its key."""
    found = []
    for field in header_fields(message):
        if field.name != "dkim-signature":
            continue
        try:
            tags = parse_tag_value(field.value.strip())
        except InvalidTagValueList as error:
            found.append(Signature("", "", f"malformed: {error}"))
            continue
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace").lower()
        missing = [tag.decode() for tag in MANDATORY_TAGS if tag not in tags]
        if missing:
            found.append(Signature(domain, selector, "no " + " ".join(f"{tag}=" for tag in missing)))
        elif tags[b"a"].strip().lower() not in ACCEPTED_ALGORITHMS:
            found.append(Signature(domain, selector, f"algorithm {tags[b'a'].decode('ascii', 'replace')} "
                                                     "not accepted"))
        elif not domain or not selector or "/" in domain + selector:
            found.append(Signature(domain, selector, "no usable d= or s="))
        else:
            found.append(Signature(domain, selector))
    return found


async def check_dkim(lookups: Lookups, message: bytes, run_in_thread: RunInThread) -> tuple[DKIMResult, ...]:
    """One result per signature (at most MAX_SIGNATURES), top to bottom; () for an unsigned message."""
    found = signatures(message)[:MAX_SIGNATURES]
    if not found:
        return ()
    names = sorted({signature.key_name for signature in found if not signature.problem})
    answers = await DeferredList([_fetch(lookups, name) for name in names], consumeErrors=True)
    keys = {name: answer if ok else KeyAnswer(problem=f"key lookup failed: {answer}", temporary=True)
            for name, (ok, answer) in zip(names, answers, strict=True)}
    results: tuple[DKIMResult, ...] = await run_in_thread(verify_all, message, found, keys)
    return results


def _fetch(lookups: Lookups, name: str) -> Deferred[KeyAnswer]:
    return Deferred.fromCoroutine(fetch_key(lookups, name))


async def fetch_key(lookups: Lookups, name: str) -> KeyAnswer:
    try:
        records = await lookup_txt(lookups, name)
    except NoSuchName:
        return KeyAnswer(problem=f"no key at {name}")
    except LookupFailed as error:
        return KeyAnswer(problem=str(error), temporary=True)
    if not records:
        return KeyAnswer(problem=f"no key at {name}")
    return KeyAnswer(records[0])


def verify_all(message: bytes, found: list[Signature], keys: dict[str, KeyAnswer]) -> tuple[DKIMResult, ...]:
    """Every signature of `found` checked against its key of `keys` (blocking: CPU only, no I/O)."""
    try:
        headers, body = parse(message)
    except dkim.DKIMException as error:
        return tuple(DKIMResult("permerror", s.domain, s.selector, f"unreadable message: {error}") for s in found)
    parsed = _Parsed(headers, body)
    fields = [field for field in headers if field[0].lower() == b"dkim-signature"]
    return tuple(_verify_one(parsed, fields[index] if index < len(fields) else None, signature, keys)
                 for index, signature in enumerate(found))


class _Parsed:
    """The message as dkimpy reads it, and its body hashes so far (several signatures often share one)."""

    def __init__(self, headers: list[list[bytes]], body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._body_hashes: dict[tuple[bytes, bytes | None], bytes] = {}

    def body_hash(self, algorithm: bytes, length: bytes | None) -> bytes:
        """SHA-256 of the body canonicalized by `algorithm` (simple or relaxed), its first l= bytes."""
        key = (algorithm, length)
        if key not in self._body_hashes:
            canonical = relaxed_body(self.body) if algorithm == b"relaxed" else Simple.canonicalize_body(self.body)
            self._body_hashes[key] = hashlib.sha256(canonical if length is None else canonical[:int(length)]).digest()
        return self._body_hashes[key]


def _verify_one(parsed: _Parsed, field: list[bytes] | None, signature: Signature,
                keys: dict[str, KeyAnswer]) -> DKIMResult:
    def result(word: str, reason: str = "") -> DKIMResult:
        return DKIMResult(word, signature.domain, signature.selector, reason)

    if signature.problem:
        return result("permerror", signature.problem)
    answer = keys[signature.key_name]
    if answer.record is None:
        return result("temperror" if answer.temporary else "permerror", answer.problem)
    if field is None:  # our scan and dkimpy's parse disagree on where the fields are
        return result("permerror", "unreadable signature field")
    try:
        return result(*_check(parsed, field, signature.key_name, answer.record))
    except Exception as error:  # on input it did not expect: this signature's error, not the message's
        return result("permerror", f"unverifiable: {type(error).__name__}: {error}")


def _check(parsed: _Parsed, field: list[bytes], key_name: str, record: bytes) -> tuple[str, str]:
    """(result, reason) of one signature: dkimpy's DKIM.verify step by step (verify_headerprep,
    verify_sig, verify_sig_process), its words where it has them, with the key and the signature
    check OpenSSL's (mailgate.mailauth.dkim_public_keys)."""
    try:
        tags = parse_tag_value(field[1])
    except InvalidTagValueList as error:
        return "permerror", f"malformed: {error}"
    try:
        dkim.validate_signature_fields(tags)  # t= in the future, x= past, i= outside d=, ...
    except dkim.ValidationError as error:
        return "fail", str(error)
    if tags[b"a"] not in ACCEPTED_ALGORITHMS:
        return "permerror", f"algorithm {tags[b'a'].decode('ascii', 'replace')} not accepted"
    if not record:
        return "permerror", f"unusable key: missing public key: {key_name}"
    try:
        key = RECORDS.key(record)
    except KeyRecordProblem as problem:
        return "permerror", f"unusable key: {problem}"
    if key.tlsrpt_only:  # RFC 8460 3: such a key signs TLS reports, never mail
        return "fail", "Message is not tlsrpt and Service Type is tlsrpt"
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as error:
        return "permerror", f"invalid c= value: {error.args[0]}"
    body_hash = parsed.body_hash(policy.body_algorithm.name, tags.get(b"l"))
    if body_hash != base64.b64decode(_WSP.sub(b"", tags[b"bh"])):
        return "fail", f"body hash mismatch (got {base64.b64encode(body_hash)!r}, expected {tags[b'bh']!r})"
    signed = [name.lower() for name in _COLON.split(tags[b"h"])]
    if b"from" in signed:  # dkimpy's rule (its bug 644046): a From added on top is hashed too, and breaks it
        signed.append(b"from")
    if key.kind == "rsa" and key.bits < MIN_RSA_BITS:  # RFC 8301 3.2
        return "permerror", f"public key too small: {key.bits}"
    digest = header_hash(policy, parsed.headers, signed, field)
    if not key.verifies(digest, base64.b64decode(_WSP.sub(b"", tags[b"b"]))):
        return "fail", "signature did not verify"
    return "pass", ""
