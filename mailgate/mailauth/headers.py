"""A message's header section as the checks and the signer read it: fields, their place, the From domain.

Works on the message's bytes (CRLF or LF line ends) without parsing the
body or building an email.message object: the checks run on every
message, and most of a message is its body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Callable, Iterator

_FIELD = re.compile(rb"[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n|\r|\Z)")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class Field:
    """One header field: its name lower-cased, its raw value (folded, after the colon), where it lies."""

    name: str
    value: bytes
    start: int
    end: int  # after its line end


def header_end(message: bytes) -> int:
    """Where the header section ends: after the line end of its last field (the empty line follows)."""
    if message.startswith((b"\r\n", b"\n")):
        return 0
    match = _END.search(message)
    return len(message) if match is None else match.start() + (2 if message[match.start()] == 13 else 1)


def header_fields(message: bytes) -> list[Field]:
    """Every field of the header section, in order; a line that is not a field is skipped."""
    return list(_fields(message, header_end(message)))


def _fields(message: bytes, end: int) -> Iterator[Field]:
    position = 0
    while position < end:
        match = _FIELD.match(message, position, end)
        if match is None or match.end() == position:
            return
        name, colon, value = match[0].partition(b":")
        if colon and name and not name[:1].isspace():
            yield Field(name.strip().decode("ascii", "replace").lower(), value, match.start(), match.end())
        position = match.end()


def unfold(value: bytes) -> bytes:
    """A field value on one line, without its line end (RFC 5322 2.2.3)."""
    return _FOLD.sub(b"", value).strip()


def without_fields(message: bytes, unwanted: Callable[[Field], bool]) -> bytes | None:
    """The message without the fields `unwanted` picks; None when there are none (nothing is copied)."""
    cut = [field for field in header_fields(message) if unwanted(field)]
    if not cut:
        return None
    kept, position = [], 0
    for field in cut:
        kept.append(message[position:field.start])
        position = field.end
    kept.append(message[position:])
    return b"".join(kept)


def from_domains(message: bytes, fields: list[Field] | None = None) -> list[str]:
    """The domains of the From: field's addresses (RFC 5322 3.6.2), lower-cased, each once.

    `fields`: the message's header_fields, when the caller has them already.
    """
    values = [unfold(field.value).decode("utf-8", "replace")
              for field in (header_fields(message) if fields is None else fields) if field.name == "from"]
    domains = [address.rpartition("@")[2].strip().rstrip(".").lower() for _, address in getaddresses(values)
               if "@" in address]
    return list(dict.fromkeys(domain for domain in domains if domain))
