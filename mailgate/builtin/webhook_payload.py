"""The webhook wire format: JSON body and Standard Webhooks signature.

Built with the stdlib `email` package (`policy.default`). Mail from the
Internet is often broken (unknown charsets, missing boundaries, 8-bit
headers), and a webhook must still be sent for it, so every field is taken
on a best-effort basis: a part that cannot be decoded yields replacement
characters, null or an empty list, never an exception.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import hmac
import json
import re
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.headerregistry import UnstructuredHeader
from email.message import EmailMessage, Message, MIMEPart
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar, cast

from mailgate.core.session import Envelope
from mailgate.mailauth.results import authentication_results

SECRET_PREFIX = "whsec_"
ID_PREFIX = "msg_"
_FOLD = re.compile(r"[ \t]*\r?\n[ \t]*")
# Headers the email package parses for structure (addresses, dates, MIME
# parameters); any other header is text, given back as it came unless it
# holds an RFC 2047 encoded word or 8-bit bytes.
_STRUCTURED = frozenset(
    name for name, kind in cast(Any, policy.default.header_factory).registry.items()
    if not issubclass(kind, UnstructuredHeader)
)
_T = TypeVar("_T")
_D = TypeVar("_D")


# --- delivery id and signature ---------------------------------------------


def delivery_id(message: bytes, route: str, recipients: Iterable[str]) -> str:
    """A stable id for one message along one route: the same on every retry.

    The queue re-reads the same stored bytes on each attempt, and those bytes
    start with mailgate's own Received line (its queue id and time), so two
    submissions of the same text still get different ids.
    """
    digest = hashlib.sha256()
    for part in (route.encode(), "\n".join(sorted(recipients)).encode(), message):
        digest.update(len(part).to_bytes(8, "big") + part)
    return ID_PREFIX + base64.b32encode(digest.digest()[:20]).decode("ascii").lower()


def secret_key(secret: str) -> bytes:
    """`whsec_` + base64 is decoded (Standard Webhooks); anything else is its UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        # Tolerate missing padding the way the standardwebhooks libraries do.
        return base64.b64decode(secret[len(SECRET_PREFIX):] + "==")
    return secret.encode("utf-8")


def sign(key: bytes, delivery: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`."""
    mac = hmac.new(key, f"{delivery}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signature_headers(delivery: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers; one signature per secret (key rotation)."""
    headers = {"webhook-id": delivery, "webhook-timestamp": str(int(timestamp))}
    if secrets:
        headers["webhook-signature"] = " ".join(sign(secret_key(s), delivery, timestamp, body) for s in secrets)
    return headers


# --- JSON body ---------------------------------------------------------------


def json_body(message: bytes, envelope: Envelope, delivery: str, authserv_id: str | None = None) -> bytes:
    """The JSON document of SPEC.md "Webhook wire format", UTF-8 encoded.

    `authentication` is read back from the message's Authentication-Results
    field naming `authserv_id` (ours, added at the end of DATA: the results
    travel in the stored message, through the queue and restarts); null
    when `authserv_id` is None (the checks are off) or there is no such
    field (the client had authenticated).
    """
    parsed = _attempt(lambda: message_from_bytes(message, policy=policy.default), None)
    if parsed is None:  # not seen in practice; the parser is very forgiving
        parsed = EmailMessage()
        parsed.set_payload(message.decode("utf-8", "replace"))
    text_part, html_part = _bodies(parsed)
    document = {
        "id": delivery,
        "envelope": {"mail_from": envelope.mail_from, "rcpt_to": list(envelope.rcpt_to)},
        "headers": [[name, value] for name, value in _headers(parsed)],
        "subject": _first_header(parsed, "subject"),
        "from": _first_header(parsed, "from"),
        "to": _addresses(parsed, "to"),
        "cc": _addresses(parsed, "cc"),
        "date": _date(parsed),
        "message_id": _first_header(parsed, "message-id"),
        "text": _attempt(lambda: _part_text(text_part), None) if text_part is not None else None,
        "html": _attempt(lambda: _part_text(html_part), None) if html_part is not None else None,
        "attachments": [
            _attachment(part) for part in _attempt(lambda: list(_leaves(parsed, (text_part, html_part))), [])
        ],
        "authentication": authentication_results(message, authserv_id) if authserv_id else None,
    }
    # "replace": a lone surrogate that slipped through must not stop the POST.
    return json.dumps(document, ensure_ascii=False, indent=None).encode("utf-8", "replace")


def _bodies(parsed: MIMEPart) -> tuple[MIMEPart | None, MIMEPart | None]:
    """The text/plain and text/html parts a mail reader would show.

    A multipart whose boundary is missing is one undivided text: shown as
    the text body rather than passed on as an opaque attachment.
    """
    text = _attempt(lambda: parsed.get_body(preferencelist=("plain",)), None)
    html = _attempt(lambda: parsed.get_body(preferencelist=("html",)), None)
    broken = _attempt(
        lambda: parsed.get_content_maintype() == "multipart" and not isinstance(parsed.get_payload(), list), False
    )
    if text is None and html is None and broken:
        text = parsed
    return text, html


def _attempt(compute: Callable[[], _T], default: _D) -> _T | _D:
    """Best effort: malformed mail makes `email` raise in many odd places."""
    try:
        return compute()
    except Exception:
        return default


def _headers(parsed: MIMEPart) -> Iterator[tuple[str, str]]:
    for name, raw in _attempt(parsed.raw_items, []):
        yield name, _header_text(parsed, name, raw)


def _header_text(parsed: MIMEPart, name: str, raw: Any) -> str:
    """The decoded value (RFC 2047, 8-bit as UTF-8); the raw text when that fails.

    A folded line's break and indentation become one space, not the tab
    unfolding alone would leave (RFC 5322 2.2.3 keeps the whitespace).
    """
    if isinstance(raw, str):
        raw = _FOLD.sub(" ", raw)
        if raw.isascii() and "=?" not in raw and name.lower() not in _STRUCTURED:
            return raw  # what the parser would return, without its cost (a class per header)
    value = _attempt(lambda: str(_parse_header(parsed.policy, name, raw)), None)
    if value is None:
        value = _attempt(lambda: str(make_header(decode_header(str(raw)))), None)
    if value is None:
        value = str(raw)
    return _clean(_FOLD.sub(" ", value))


def _first_raw(parsed: MIMEPart, name: str) -> tuple[str, Any] | None:
    """The first `name` header as (name as written, raw value), or None."""
    return next(((key, raw) for key, raw in _attempt(parsed.raw_items, []) if key.lower() == name), None)


def _first_header(parsed: MIMEPart, name: str) -> str | None:
    first = _first_raw(parsed, name)
    return _header_text(parsed, *first).strip() if first is not None else None


def _addresses(parsed: MIMEPart, name: str) -> list[str]:
    """Every address of every `name` header, as `Name <local@domain>` or `local@domain`."""
    found: list[str] = []
    for key, raw in _attempt(parsed.raw_items, []):
        if key.lower() != name:
            continue
        header = _attempt(lambda: _parse_header(parsed.policy, key, raw), None)
        addresses = _attempt(lambda: [str(a) for a in header.addresses], None) if header is not None else None
        if addresses is None or (not addresses and str(raw).strip()):
            text = _header_text(parsed, key, raw)
            addresses = [_format_pair(n, a) for n, a in _attempt(lambda: getaddresses([text]), []) if a]
        found.extend(_clean(a) for a in addresses)
    return found


@functools.lru_cache(maxsize=64)
def _parse_header(header_policy: Any, name: str, raw: str) -> Any:
    """A parsed header, once: json_body asks for From, To and Date twice each."""
    return header_policy.header_fetch_parse(name, raw)


def _format_pair(name: str, address: str) -> str:
    return f"{name} <{address}>" if name else address


def _date(parsed: MIMEPart) -> str | None:
    first = _first_raw(parsed, "date")
    if first is None:
        return None
    text = _header_text(parsed, *first).strip()
    if not text:
        return None
    when = _attempt(lambda: _parse_header(parsed.policy, *first).datetime, None)
    if when is None:
        when = _attempt(lambda: parsedate_to_datetime(text), None)
    return when.isoformat() if when is not None else None


def _part_text(part: MIMEPart) -> str:
    """A text part decoded from its transfer encoding and charset, whatever they claim."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):  # a multipart where text was expected
        return ""
    # Mail carries CRLF; web code expects "\n", as the email package's own readers give.
    return _decode_bytes(payload, part.get_content_charset()).replace("\r\n", "\n")


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Declared charset if Python knows it; undeclared or unknown: UTF-8, else Latin-1.

    Mail labelled us-ascii (or not labelled) that holds 8-bit UTF-8 is common
    enough that UTF-8 is tried before giving up on it.
    """
    known = _attempt(lambda: codecs.lookup(charset).name, None) if charset else None
    if known is not None and known != "ascii":
        return _clean(data.decode(known, "replace"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _clean(text: str) -> str:
    """Text safe to encode as UTF-8: stray surrogates (8-bit bytes the parser kept) re-decoded."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _leaves(part: MIMEPart, bodies: tuple[Any, ...]) -> Iterator[MIMEPart]:
    """Every part but multipart containers and the chosen text and HTML bodies.

    An attached message (message/rfc822) is one attachment, not opened up.
    """
    if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
        for child in part.get_payload():
            if isinstance(child, Message):
                yield from _leaves(cast(MIMEPart, child), bodies)  # parsed under policy.default
        return
    if not any(part is body for body in bodies):
        yield part


def _attachment(part: MIMEPart) -> dict[str, Any]:
    content = _attempt(lambda: _part_bytes(part), b"")
    filename = _attempt(part.get_filename, None) or _attempt(lambda: part.get_param("name"), None)
    if isinstance(filename, tuple):  # an RFC 2231 value get_param left undecoded
        charset, _, raw = filename
        filename = _attempt(lambda: _decode_bytes(raw.encode("latin-1"), charset), None)
    if filename is not None:
        filename = _attempt(lambda: str(make_header(decode_header(str(filename)))), str(filename))
    return {
        "filename": _clean(filename) if filename else None,
        "content_type": _attempt(part.get_content_type, "application/octet-stream"),
        "content_id": _first_header(part, "content-id"),
        "size": len(content),
        "content": base64.b64encode(content).decode("ascii"),
    }


def _part_bytes(part: MIMEPart) -> bytes:
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list):
            crlf = policy.default.clone(linesep="\r\n")
            return b"".join(_attempt(lambda: m.as_bytes(policy=crlf), b"") for m in inner if isinstance(m, Message))
        return str(inner).encode("utf-8", "surrogateescape")
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""
