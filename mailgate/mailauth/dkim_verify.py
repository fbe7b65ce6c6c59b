"""DKIM verification (RFC 6376 6) of every signature of a message, with dkimpy: keys from the reactor, maths in a thread.

The keys are fetched first, all at once, through twisted.names on the
reactor (`relay.nameservers`, `authentication.dns_timeout`); dkimpy then
verifies every signature in one pool thread, its DNS callback answered
from what was fetched, so no thread ever waits on the network and no
blocking DNS library runs. Results (RFC 8601 2.7.1): `pass`, `fail` (the
body or the headers changed), `permerror` (a malformed signature, no key
or an unusable one, rsa-sha1 or an RSA key under 1024 bits: RFC 8301),
`temperror` (the key lookup failed or timed out).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
from dkim.util import InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, DeferredList

from mailgate.mailauth.headers import header_fields
from mailgate.mailauth.results import DKIMResult
from mailgate.net.dns import LookupFailed, Lookups, NoSuchName, lookup_txt

MANDATORY_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
ACCEPTED_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")  # RFC 8301 3.1: rsa-sha1 is not accepted
MAX_SIGNATURES = 10  # checked per message; more is an abuse of the verifier's time

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
    """Blocking (run in a thread): dkimpy on each signature, its DNS callback answered from `keys`."""
    try:
        verifier = dkim.DKIM(message)
    except dkim.DKIMException as error:
        return tuple(DKIMResult("permerror", s.domain, s.selector, f"unreadable message: {error}") for s in found)
    return tuple(_verify_one(verifier, index, signature, keys) for index, signature in enumerate(found))


def _verify_one(verifier: Any, index: int, signature: Signature, keys: dict[str, KeyAnswer]) -> DKIMResult:
    def result(word: str, reason: str = "") -> DKIMResult:
        return DKIMResult(word, signature.domain, signature.selector, reason)

    if signature.problem:
        return result("permerror", signature.problem)
    answer = keys[signature.key_name]
    if answer.record is None:
        return result("temperror" if answer.temporary else "permerror", answer.problem)
    try:
        verified = verifier.verify(index, dnsfunc=lambda name, timeout=0: answer.record)
    except dkim.ValidationError as error:
        return result("fail", str(error))
    except dkim.DKIMException as error:
        return result("permerror", str(error))
    except Exception as error:  # dkimpy on input it did not expect: this signature's error, not the message's
        return result("permerror", f"unverifiable: {type(error).__name__}: {error}")
    if verified:
        return result("pass")
    try:  # dkimpy answers False for a bad key too: parsed only on this path, so a pass parses it once
        dkim.evaluate_pk(signature.key_name, answer.record)
    except (dkim.KeyFormatError, binascii.Error, ValueError) as error:
        return result("permerror", f"unusable key: {error}")
    return result("fail", "signature did not verify")
