"""DKIM verification (RFC 6376 6) of every signature of a message: keys from the reactor, the maths by OpenSSL.

The keys are fetched first, all at once, through twisted.names on the
reactor (`relay.nameservers`, `authentication.dns_timeout`); then every
signature is checked, as dkimpy's `DKIM.verify` checks it and with its
pieces (tag parsing and validation, canonicalization, header selection,
the extra From it hashes), but with the public-key work done by OpenSSL
through `cryptography` (mailgate.mailauth.dkim_public_keys: each key
record read once, then kept) and the body canonicalized by
mailgate.mailauth.dkim_canon. dkimpy's RSA is pure Python: on the bench's
1 KB message (bench/mailauth_inprocess.py, CPU time) its `dkim.verify`
takes 0.45-0.5 ms, 0.26 of them the RSA-2048 verification and 0.06
reading the key record, against 0.03 for OpenSSL's verification and a
dictionary look-up; `verify_all` takes 0.1 ms. Property tests hold the
results to dkimpy's (pass exactly when it passes) for messages signed,
then changed.

Where: CPU-heavy work goes to the thread pool, and with dkimpy's RSA a
verification was that. For a small message it no longer is, and it is
verified on the reactor: up to INLINE_MAX_BYTES (16 KB) and
INLINE_MAX_SIGNATURES (2), `verify_all` takes 0.1 ms for the bench's 1 KB
message, 0.2-0.3 ms for 16 KB of text signed twice, and at most 1.9 ms for
16 KB made to be slow (4000 lines of "a ", two signatures that share no
canonical body). Handing it to the pool and back costs more CPU than the
1 KB verification itself: the whole check of that message on a running
reactor takes 0.25-0.28 ms with DKIM verified there, 0.34-0.45 through
the pool (bench/mailauth_inprocess.py, --sizes, --pool-always). And a
pool thread running Python holds the GIL for up to the switch interval
(5 ms) anyway, so the reactor waits no longer. Larger messages, where the
canonicalization grows with the body (6.6 ms for 64 KB made to be slow),
and messages with more signatures are verified in the pool.

Results (RFC 8601 2.7.1): `pass`, `fail` (the body or the headers changed,
an expired or future signature), `permerror` (a malformed signature, no
key or an unusable one, rsa-sha1 or an RSA key under 1024 bits: RFC 8301),
`temperror` (the key lookup failed or timed out).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
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
from mailgate.mailauth.headers import Field, header_fields
from mailgate.mailauth.results import DKIMResult
from mailgate.net.dns import LookupFailed, Lookups, NoSuchName, lookup_txt

MANDATORY_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
ACCEPTED_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")  # RFC 8301 3.1: rsa-sha1 is not accepted
MAX_SIGNATURES = 10  # checked per message; more is an abuse of the verifier's time
INLINE_MAX_BYTES = 16 * 1024  # verified on the reactor up to this size and this many signatures (docstring)
INLINE_MAX_SIGNATURES = 2
_WSP = re.compile(rb"\s+")
_COLON = re.compile(rb"\s*:\s*")

RunInThread = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Signature:
    """What the reactor needs of one DKIM-Signature field: where its key is, or why it is unusable.

    `value` and `tags` are the field as read, so that verifying it need not parse its tags again.
    """

    domain: str
    selector: str
    problem: str = ""
    value: bytes = field(default=b"", compare=False)
    tags: dict[bytes, bytes] = field(default_factory=dict, compare=False)

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


@dataclass(frozen=True)
class KeyAnswer:
    """A key lookup's outcome: the TXT record, or why there is none (`temporary` for temperror)."""

    record: bytes | None = None
    problem: str = ""
    temporary: bool = False


def signatures(message: bytes, fields: list[Field] | None = None) -> list[Signature]:
    """Every DKIM-Signature field, top to bottom (dkimpy's index order), read enough to find its key.

    `fields`: the message's header_fields, when the caller has them already.
    """
    found = []
    for header in header_fields(message) if fields is None else fields:
        if header.name != "dkim-signature":
            continue
        try:
            tags = parse_tag_value(header.value.strip())
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
            found.append(Signature(domain, selector, value=header.value, tags=tags))
    return found


async def check_dkim(lookups: Lookups, message: bytes, run_in_thread: RunInThread,
                     fields: list[Field] | None = None) -> tuple[DKIMResult, ...]:
    """One result per signature (at most MAX_SIGNATURES), top to bottom; () for an unsigned message.

    A small message (INLINE_MAX_BYTES, INLINE_MAX_SIGNATURES) is verified here, on the reactor; any
    other in `run_in_thread`.
    """
    found = signatures(message, fields)[:MAX_SIGNATURES]
    if not found:
        return ()
    keys = await _fetch_keys(lookups, sorted({s.key_name for s in found if not s.problem}))
    if len(message) <= INLINE_MAX_BYTES and len(found) <= INLINE_MAX_SIGNATURES:
        return verify_all(message, found, keys)
    results: tuple[DKIMResult, ...] = await run_in_thread(verify_all, message, found, keys)
    return results


async def _fetch_keys(lookups: Lookups, names: list[str]) -> dict[str, KeyAnswer]:
    """Every key at once; the one key of most messages without a DeferredList around it."""
    if len(names) == 1:
        try:
            return {names[0]: await fetch_key(lookups, names[0])}
        except Exception as error:  # noqa: BLE001 - what DeferredList's consumeErrors makes of it below
            return {names[0]: KeyAnswer(problem=f"key lookup failed: {error}", temporary=True)}
    answers = await DeferredList([Deferred.fromCoroutine(fetch_key(lookups, name)) for name in names],
                                 consumeErrors=True)
    return {name: answer if ok else KeyAnswer(problem=f"key lookup failed: {answer}", temporary=True)
            for name, (ok, answer) in zip(names, answers, strict=True)}


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
    fields = [header for header in headers if header[0].lower() == b"dkim-signature"]
    return tuple(_verify_one(parsed, fields[index] if index < len(fields) else None, signature, keys)
                 for index, signature in enumerate(found))


class _Parsed:
    """The message as dkimpy reads it, its canonical bodies and their hashes so far: signatures share
    them, and each canonicalization is done at most once whatever their l= say."""

    def __init__(self, headers: list[list[bytes]], body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._bodies: dict[bytes, bytes] = {}
        self._hashes: dict[tuple[bytes, bytes | None], bytes] = {}

    def body_hash(self, algorithm: bytes, length: bytes | None) -> bytes:
        """SHA-256 of the body canonicalized by `algorithm` (simple or relaxed), its first l= bytes."""
        if algorithm not in self._bodies:
            self._bodies[algorithm] = relaxed_body(self.body) if algorithm == b"relaxed" \
                else Simple.canonicalize_body(self.body)
        if (algorithm, length) not in self._hashes:
            canonical = self._bodies[algorithm]
            self._hashes[algorithm, length] = hashlib.sha256(
                canonical if length is None else canonical[:int(length)]).digest()
        return self._hashes[algorithm, length]


def _verify_one(parsed: _Parsed, header: list[bytes] | None, signature: Signature,
                keys: dict[str, KeyAnswer]) -> DKIMResult:
    def result(word: str, reason: str = "") -> DKIMResult:
        return DKIMResult(word, signature.domain, signature.selector, reason)

    if signature.problem:
        return result("permerror", signature.problem)
    answer = keys[signature.key_name]
    if answer.record is None:
        return result("temperror" if answer.temporary else "permerror", answer.problem)
    if header is None:  # our scan and dkimpy's parse disagree on where the fields are
        return result("permerror", "unreadable signature field")
    try:
        return result(*_check(parsed, header, signature, answer.record))
    except Exception as error:  # on input it did not expect: this signature's error, not the message's
        return result("permerror", f"unverifiable: {type(error).__name__}: {error}")


def _check(parsed: _Parsed, header: list[bytes], signature: Signature, record: bytes) -> tuple[str, str]:
    """(result, reason) of one signature: dkimpy's DKIM.verify step by step (verify_headerprep,
    verify_sig, verify_sig_process), its words where it has them, with the key and the signature
    check OpenSSL's (mailgate.mailauth.dkim_public_keys)."""
    try:  # the scan's tags when it read the field as dkimpy does (it does, but for odd line ends)
        tags = signature.tags if header[1] == signature.value else parse_tag_value(header[1])
    except InvalidTagValueList as error:
        return "permerror", f"malformed: {error}"
    try:
        dkim.validate_signature_fields(tags)  # t= in the future, x= past, i= outside d=, ...
    except dkim.ValidationError as error:
        return "fail", str(error)
    if tags[b"a"] not in ACCEPTED_ALGORITHMS:
        return "permerror", f"algorithm {tags[b'a'].decode('ascii', 'replace')} not accepted"
    if not record:
        return "permerror", f"unusable key: missing public key: {signature.key_name}"
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
    digest = header_hash(policy, parsed.headers, signed, header)
    if not key.verifies(digest, base64.b64decode(_WSP.sub(b"", tags[b"b"]))):
        return "fail", "signature did not verify"
    return "pass", ""
