"""A message as DKIM hashes it (RFC 6376 3.4): dkimpy's parse and relaxed body canonicalization, faster.

Signing (mailgate.mailauth.dkim_sign) and verification
(mailgate.mailauth.dkim_verify) hash what dkimpy hashes, byte for byte
(property-tested against `dkim.rfc822_parse` and
`Relaxed.canonicalize_body`), in less time on the common message: one
whose lines all end with CRLF, most of whose white space is single spaces.
"""

from __future__ import annotations

import re

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
from dkim.canonicalization import (  # type: ignore[import-untyped]
    CanonicalizationPolicy,
    correct_empty_body,
    strip_trailing_lines,
)

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_WSP_TO_CHANGE = re.compile(rb"[\t ]{2,}|\t")  # a lone space stays as it is


def parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's `rfc822_parse(message)`, the same (headers, body), without its regular-expression split
    of the whole message into lines when every line already ends with CRLF: that split and join gives
    the body back unchanged, and was half of the time signing a 100 KB message took."""
    if message.count(b"\n") != message.count(b"\r\n"):
        return dkim.rfc822_parse(message)  # bare LFs: dkimpy's split makes them CRLF
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return dkim.rfc822_parse(message)  # no body
    headers, _ = dkim.rfc822_parse(message[:end + 2])
    return headers, message[end + 4:]


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4 exactly as dkimpy's Relaxed.canonicalize_body computes it: white space before
    each CRLF removed, every other run of it one space, empty lines at the end removed. Line by line
    with bytes methods; the regular expression only on lines that have a tab or two spaces."""
    lines = body.split(b"\r\n")
    last = lines.pop()  # after the last CRLF: dkimpy strips nothing there, only compresses
    kept = [line.rstrip(b" \t") for line in lines] + [last]
    compressed = [_WSP_TO_CHANGE.sub(b" ", line) if b"\t" in line or b"  " in line else line for line in kept]
    return bytes(correct_empty_body(strip_trailing_lines(b"\r\n".join(compressed))))
