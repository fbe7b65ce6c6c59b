"""DKIM verification with OpenSSL (mailgate.mailauth.dkim_verify, dkim_public_keys) agrees with dkimpy's."""

from __future__ import annotations

import base64
import subprocess
from typing import Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.names import dns

from mailgate.mailauth import dkim_public_keys
from mailgate.mailauth.dkim_public_keys import KeyRecordProblem, RecordCache, read_record
from mailgate.mailauth.dkim_sign import sign
from mailgate.mailauth.dkim_verify import INLINE_MAX_BYTES, KeyAnswer, check_dkim, signatures, verify_all
from mailgate.mailauth.keys import SigningKey
from mailgate.net.dns import Lookups

RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # dkimpy signs in pure Python: small
RSA_PEM = RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
RSA_RECORD = b"v=DKIM1; k=rsa; p=" + base64.b64encode(RSA.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
ED = ed25519.Ed25519PrivateKey.generate()
ED_SEED = base64.b64encode(ED.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                            serialization.NoEncryption()))
ED_RECORD = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ED.public_key().public_bytes(
    serialization.Encoding.Raw, serialization.PublicFormat.Raw))
RECORDS = {b"r": RSA_RECORD, b"e": ED_RECORD}

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: Hi  there\r\n"
           b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nline one   \r\n\r\n\r\n")


def ours(message: bytes, record: bytes | None = None) -> tuple[str, str]:
    found = signatures(message)
    keys = {s.key_name: KeyAnswer(record if record is not None else RECORDS[s.selector.encode()])
            for s in found if not s.problem}
    [result] = verify_all(message, found[:1], keys)
    return result.result, result.reason


def dkimpys(message: bytes) -> bool:
    def dns(name: bytes, timeout: int = 0) -> bytes:
        return RECORDS[name.split(b".")[0]]
    try:
        return bool(dkim.verify(message, dnsfunc=dns))
    except Exception:  # noqa: BLE001 - dkimpy lets some errors out (nacl's); not a pass either way
        return False


def dkimpy_signed(message: bytes, selector: bytes, canonicalize: tuple[bytes, bytes], include: list[bytes],
                  length: bool) -> bytes:
    if selector == b"e":
        field = dkim.sign(message, b"e", b"example.test", ED_SEED, signature_algorithm=b"ed25519-sha256",
                          canonicalize=canonicalize, include_headers=include, length=length)
    else:
        field = dkim.sign(message, b"r", b"example.test", RSA_PEM, canonicalize=canonicalize,
                          include_headers=include, length=length)
    return field + message


_HEADERS = st.lists(st.sampled_from([b"To: bob@remote.test", b"Subject: Hi  there", b"Subject: again\t",
                                     b"Cc: c@d.test,\r\n  e@f.test", b"X-Note:  folded\r\n\tvalue ",
                                     b"Date: Tue, 01 Dec 2026 10:00:00 +0000"]), max_size=4)
_BODY = st.lists(st.sampled_from([b"", b"text", b"two  spaces", b"tab\there", b"trailing  ", b" lead", b".dot"]),
                 max_size=8)
_CANON = st.tuples(st.sampled_from([b"simple", b"relaxed"]), st.sampled_from([b"simple", b"relaxed"]))
_MUTATIONS = st.sampled_from([
    "none", "body byte", "body space", "body tab", "body line appended", "body blank lines", "header value",
    "header case", "header space", "from on top", "unsigned header on top", "subject on top", "signature tag",
    "b= changed", "bh= changed", "folded differently", "bare LF",
])


def mutated(message: bytes, how: str, position: int) -> bytes:
    head, _, body = message.partition(b"\r\n\r\n")
    spot = position % (len(body) + 1)
    if how == "body byte" and body:
        spot = min(spot, len(body) - 1)
        body = body[:spot] + bytes([body[spot] ^ 1]) + body[spot + 1:]
    elif how == "body space":
        body = body[:spot] + b" " + body[spot:]
    elif how == "body tab":
        body = body.replace(b" ", b"\t", 1)
    elif how == "body line appended":
        body += b"appended\r\n"
    elif how == "body blank lines":
        body += b"\r\n\r\n"
    elif how == "header value":
        head = head.replace(b"alice@", b"mallory@", 1)
    elif how == "header case":
        head = head.replace(b"\r\nFrom:", b"\r\nFROM:", 1)
    elif how == "header space":
        head = head.replace(b"Subject: ", b"Subject:  ", 1)
    elif how == "from on top":
        head = b"From: mallory@evil.test\r\n" + head
    elif how == "unsigned header on top":
        head = b"Received: from somewhere\r\n" + head
    elif how == "subject on top":
        head = b"Subject: changed\r\n" + head
    elif how == "signature tag":
        head = head.replace(b"d=example.test", b"d=example.test; z=x", 1)
    elif how == "b= changed":
        at = head.index(b" b=") + 6
        head = head[:at] + (b"A" if head[at:at + 1] != b"A" else b"B") + head[at + 1:]
    elif how == "bh= changed":
        at = head.index(b"bh=") + 4
        head = head[:at] + (b"A" if head[at:at + 1] != b"A" else b"B") + head[at + 1:]
    elif how == "folded differently":
        head = head.replace(b"; ", b";\r\n\t", 1)
    elif how == "bare LF":
        return (head + b"\r\n\r\n" + body).replace(b"\r\n", b"\n")
    return head + b"\r\n\r\n" + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_HEADERS, _BODY, st.sampled_from([b"r", b"e"]), _CANON, st.booleans(), st.booleans(), _MUTATIONS,
       st.integers(0, 10_000))
def test_verification_agrees_with_dkimpy(headers: list[bytes], body: list[bytes], selector: bytes,
                                         canonicalize: tuple[bytes, bytes], length: bool, sign_all: bool,
                                         how: str, position: int) -> None:
    """Signed by dkimpy (either algorithm, any c=, l= or not), then changed: pass exactly when dkimpy passes."""
    message = b"\r\n".join([b"From: Alice <alice@example.test>", *headers, b"", *body]) + b"\r\n"
    include = [b"from"] + ([line.split(b":")[0].lower() for line in headers] if sign_all else [])
    signed = mutated(dkimpy_signed(message, selector, canonicalize, include, length), how, position)
    result, reason = ours(signed)
    assert (result == "pass") == dkimpys(signed), (result, reason)
    assert result in ("pass", "fail", "permerror"), (result, reason)
    if how == "none":
        assert result == "pass", reason


@settings(max_examples=100, deadline=None)
@given(_HEADERS, _BODY, st.sampled_from([b"r", b"e"]), _MUTATIONS, st.integers(0, 10_000))
def test_what_mailgate_signs_verifies_as_dkimpy_says(headers: list[bytes], body: list[bytes], selector: bytes,
                                                     how: str, position: int) -> None:
    """Signed by mailgate's signer (relaxed/relaxed, From oversigned), then changed: the same agreement."""
    message = b"\r\n".join([b"From: Alice <alice@example.test>", *headers, b"", *body]) + b"\r\n"
    key = SigningKey("example.test", selector.decode(), "", RSA if selector == b"r" else ED)
    [field] = sign(message, [key], ["from", "to", "subject", "cc", "date"])
    signed = mutated(field + message, how, position)
    result, reason = ours(signed)
    assert (result == "pass") == dkimpys(signed), (result, reason)
    if how == "none":
        assert result == "pass", reason


def test_result_words_for_keys_and_signatures() -> None:
    signed = dkimpy_signed(MESSAGE, b"r", (b"relaxed", b"simple"), [b"from", b"subject"], False)
    bare = base64.b64encode(RSA.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1))
    assert ours(signed, b"k=rsa; p=" + bare) == ("pass", "")  # a bare RSAPublicKey, as dkimpy takes it
    assert ours(signed, RSA_RECORD.replace(b"v=DKIM1; ", b""))[0] == "pass"  # v= is optional
    small = subprocess.run(["openssl", "genrsa", "768"], capture_output=True, check=True).stdout
    small_key = serialization.load_pem_private_key(small, None)
    assert isinstance(small_key, rsa.RSAPrivateKey)
    small_signed = dkim.sign(MESSAGE, b"r", b"example.test", small, include_headers=[b"from"]) + MESSAGE
    small_record = b"p=" + base64.b64encode(small_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert ours(small_signed, small_record) == ("permerror", "public key too small: 768")  # RFC 8301
    for record, reason in [(b"", "missing public key"), (b"v=DKIM1; k=rsa; p=", "revoked"),
                           (b"v=DKIM2; p=AAAA", "bad version"), (b"k=dsa; p=AAAA", "unknown algorithm"),
                           (b"p=AAAA", "could not parse RSA"), (b"k=ed25519; p=AAAA", "ed25519"),
                           (b"p=AAAAA", "not base64"), (b"v=DKIM1; k=rsa", "incomplete"),
                           (RSA_RECORD + b"; s=web", "unknown service"), (b"garbage", "malformed")]:
        result, why = ours(signed, record)
        assert result == "permerror" and reason in why, (record, why)
    assert ours(signed, RSA_RECORD + b"; s=tlsrpt")[0] == "fail"  # a TLS-report key signs no mail
    assert ours(signed.replace(b"c=relaxed/simple", b"c=odd/simple"))[0] == "permerror"
    assert ours(signed.replace(b"Hi  there", b"Ho  there"))[0] == "fail"
    assert ours(signed.replace(b"line one", b"line two"))[1].startswith("body hash mismatch")


def test_an_unreadable_message_is_a_permerror_for_each_signature() -> None:
    signed = dkimpy_signed(MESSAGE, b"r", (b"relaxed", b"simple"), [b"from"], False)
    broken = signed.replace(b"To: bob", b"To : bob")  # dkimpy's parser refuses the field
    assert ours(broken)[0] == "permerror" and "unreadable message" in ours(broken)[1]


def test_a_record_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[bytes] = []

    def counting(record: bytes) -> dkim_public_keys.PublicKey:
        reads.append(record)
        return read_record(record)

    monkeypatch.setattr(dkim_public_keys, "read_record", counting)
    cache = RecordCache(max_entries=2)
    for _ in range(3):
        assert cache.key(RSA_RECORD).kind == "rsa"
        with pytest.raises(KeyRecordProblem, match="bad version"):
            cache.key(b"v=DKIM2; p=AAAA")
    assert reads == [RSA_RECORD, b"v=DKIM2; p=AAAA"]
    cache.key(ED_RECORD)  # a third record: the oldest goes
    cache.key(RSA_RECORD)
    assert reads == [RSA_RECORD, b"v=DKIM2; p=AAAA", ED_RECORD, RSA_RECORD]


class _MemoryResolver:
    def lookupText(self, name: str, timeout: object = None) -> Deferred[object]:  # noqa: N802 - IResolver's
        record = RECORDS[name.split(".")[0].encode()]
        return succeed(([dns.RRHeader(name.encode(), dns.TXT, payload=dns.Record_TXT(record))], [], []))


def test_small_messages_are_verified_on_the_reactor_others_in_the_pool() -> None:
    pooled: list[int] = []

    def pool(work: Callable[..., object], message: bytes, *args: object) -> Deferred[object]:
        pooled.append(len(message))
        return maybeDeferred(work, message, *args)

    lookups = Lookups(_MemoryResolver(), 5.0, Clock())

    def verdicts(message: bytes) -> list[str]:
        done = Deferred.fromCoroutine(check_dkim(lookups, message, pool))
        return [result.result for result in done.result]

    body = b"".join(b"line %d of a long message\r\n" % n for n in range(INLINE_MAX_BYTES // 20))
    small = dkimpy_signed(MESSAGE, b"r", (b"relaxed", b"relaxed"), [b"from"], False)
    large = dkimpy_signed(MESSAGE + body, b"e", (b"relaxed", b"simple"), [b"from"], False)
    assert verdicts(small) == ["pass"] and pooled == []
    assert verdicts(large) == ["pass"] and pooled == [len(large)]
    signed_thrice = dkimpy_signed(dkimpy_signed(small, b"e", (b"simple", b"simple"), [b"from"], False),
                                  b"r", (b"simple", b"relaxed"), [b"from"], True)
    assert verdicts(signed_thrice) == ["pass", "pass", "pass"] and pooled == [len(large), len(signed_thrice)]
