"""RFC 3461 DSN parameters: their syntax (xtext), what NOTIFY asks for, and what a next hop is given.

The parameters are kept as the client sent them (upper-cased keywords,
xtext as it came), so they can be passed on unchanged to a next hop that
offers DSN; `xtext_decode` gives the text a report shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

FAILURE, DELAY, SUCCESS, NEVER = "FAILURE", "DELAY", "SUCCESS", "NEVER"
MAX_ENVID = 100  # RFC 3461 4.4
MAX_ORCPT = 500  # RFC 3461 4.2, the whole value
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")  # RFC 3461 4: "+" and "=" are encoded
_ADDR_TYPE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_HEX = re.compile(r"\+([0-9A-F]{2})")


class DSNError(ValueError):
    """A DSN parameter that is not valid; the text is safe to show the client."""


def xtext_decode(value: str) -> str:
    """The text an xtext stands for ("+2B" is "+"); octets that are not UTF-8 are replaced."""
    raw = _HEX.sub(lambda m: chr(int(m[1], 16)), value)
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def xtext_encode(text: str) -> str:
    """`text` (UTF-8 octets) as xtext: "+", "=" and anything not printable ASCII as +HH."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}"
                   for b in text.encode("utf-8"))


def check_notify(value: str | None) -> str:
    """NOTIFY=NEVER, or a list of SUCCESS, FAILURE and DELAY (RFC 3461 4.1), upper-cased."""
    words = (value or "").upper().split(",")
    if words == [NEVER]:
        return NEVER
    if not words or len(set(words)) != len(words) or not set(words) <= {SUCCESS, FAILURE, DELAY}:
        raise DSNError("NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY")
    return ",".join(words)


def check_orcpt(value: str | None) -> str:
    """ORCPT=addr-type;xtext (RFC 3461 4.2), as sent."""
    addr_type, semicolon, address = (value or "").partition(";")
    if not semicolon or not _ADDR_TYPE.fullmatch(addr_type) or not address or len(value or "") > MAX_ORCPT:
        raise DSNError("ORCPT must be addr-type;xtext")
    if not _XTEXT.fullmatch(address):
        raise DSNError("ORCPT is not valid xtext")
    return f"{addr_type};{address}"


def check_ret(value: str | None) -> str:
    """RET=FULL or HDRS (RFC 3461 4.3)."""
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise DSNError("RET must be FULL or HDRS")
    return ret


def check_envid(value: str | None) -> str:
    """ENVID=xtext of at most 100 characters (RFC 3461 4.4)."""
    if not value or len(value) > MAX_ENVID or not _XTEXT.fullmatch(value):
        raise DSNError("ENVID must be xtext of at most 100 characters")
    return value


def original_recipient(orcpt: str | None) -> str | None:
    """An ORCPT as a report's Original-Recipient field shows it: "rfc822;bob@example.test"."""
    if not orcpt:
        return None
    addr_type, _, address = orcpt.partition(";")
    return f"{addr_type};{xtext_decode(address)}"


def wants(notify: str | None, kind: str) -> bool:
    """Whether a recipient's NOTIFY asks for reports of `kind`: without NOTIFY, failures and
    delays are reported and success is not (RFC 3461 4.1)."""
    if not notify:
        return kind in (FAILURE, DELAY)
    return kind in notify.split(",")


@dataclass(frozen=True)
class DSNRequest:
    """What a message's sender asked for, as a next hop that offers DSN is to be told.

    `mail`: the MAIL FROM parameters ("RET=HDRS", "ENVID=..."); `rcpt`: each
    recipient's RCPT TO parameters ("NOTIFY=SUCCESS", "ORCPT=rfc822;...").
    """

    mail: tuple[str, ...] = ()
    rcpt: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, mail_parameters: Mapping[str, str | None],
           recipients: Mapping[str, Mapping[str, str | None]]) -> DSNRequest:
        mail = tuple(f"{name}={mail_parameters[name]}" for name in ("RET", "ENVID") if mail_parameters.get(name))
        rcpt = {address: tuple(f"{name}={params[name]}" for name in ("NOTIFY", "ORCPT") if params.get(name))
                for address, params in recipients.items()}
        return cls(mail, {address: words for address, words in rcpt.items() if words})
