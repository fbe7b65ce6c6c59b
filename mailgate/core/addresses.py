"""RFC 5321 paths: parsing MAIL FROM / RCPT TO arguments into safe addresses, SMTPUTF8 ones too.

One rule for every address (SMTP paths, users, forwards, lists, config):
the local part NFC-normalized (RFC 6532 3.1) and lower-cased, the domain
lower-cased and, when international, in its A-label form (IDNA 2008 with
UTS 46 mapping, the `idna` package), so `bücher.example` and
`xn--bcher-kva.example` name the same mailbox everywhere.
"""

from __future__ import annotations

import re
import unicodedata

import idna

_UTF8 = "\u0080-\U0010ffff"  # RFC 6532 UTF8-non-ascii; what is not printable is refused after the match
_ATEXT = rf"[A-Za-z0-9!#$%&'*+=?^_`{{|}}~{_UTF8}-]"  # RFC 5322 atext without "/" (never a path part)
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x2e\x30-\x5a\x5e-\x7e]+\]"  # dcontent without "/", as _ATEXT
_PLAIN_LOCAL = re.compile(_DOT_STRING)  # what needs no quotes: "alice" is alice
_DOMAIN_NAME = re.compile(_DOMAIN)
_ANY_DOMAIN = rf"[A-Za-z0-9{_UTF8}][A-Za-z0-9.{_UTF8}-]*"  # checked as a domain (IDNA) after the match
_MAILBOX = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_ANY_DOMAIN}|{_LITERAL})")
_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"))  # controls, format, spaces, unassigned
_SOURCE_ROUTE = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*:")
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_PATH = 256  # RFC 5321 4.5.3.1.3, brackets included


class AddressError(ValueError):
    """A path that is not acceptable; the message is safe to show the client."""


def parse_command_path(argument: str, prefix: str) -> tuple[str, dict[str, str | None]]:
    """Split `FROM:<a@b> SIZE=10` into ("a@b", {"SIZE": "10"}).

    `prefix` is "FROM" or "TO". A lone space after the colon is tolerated,
    as Postfix does, because some clients send it.
    """
    head, colon, rest = argument.partition(":")
    if not colon or head.strip().upper() != prefix:
        raise AddressError(f"Syntax: {'MAIL FROM' if prefix == 'FROM' else 'RCPT TO'}:<address>")
    rest = rest.lstrip(" ")
    if not rest.startswith("<"):
        raise AddressError("Path must be enclosed in <>")
    end = _closing_bracket(rest)
    path, params = rest[1:end], rest[end + 1 :].split()
    return path, _parse_params(params)


def _closing_bracket(text: str) -> int:
    """Index of the '>' ending the path; a quoted local part may contain '>'."""
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    raise AddressError("Path must be enclosed in <>")


def _parse_params(words: list[str]) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in words:
        match = _PARAM.fullmatch(word)
        if not match:
            raise AddressError(f"Bad parameter syntax: {_printable(word[:40])}")
        params[match.group(1).upper()] = match.group(2)
    return params


def normalize_mailbox(path: str) -> str:
    """Validate a path's mailbox and return it lower-cased.

    Source routes (`@a,@b:user@c`) are dropped per RFC 5321 appendix C. The
    domain and the local part are lower-cased: local parts are treated
    case-insensitively, as Postfix does for local users.
    """
    if len(path) + 2 > MAX_PATH:
        raise AddressError("Address too long")
    route = _SOURCE_ROUTE.match(path)
    if route:
        path = path[route.end() :]
    match = _MAILBOX.fullmatch(path)
    if not match:
        raise AddressError("Bad address syntax")
    local, domain = unicodedata.normalize("NFC", match.group("local")), match.group("domain")
    if not local.isascii() and not _printable_utf8(local):
        raise AddressError("Bad address syntax")
    if not domain.startswith("["):
        try:
            domain = _domain(domain)
        except AddressError:
            raise AddressError("Bad address syntax") from None
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:  # octets (RFC 6531 3.3)
        raise AddressError("Local part too long")
    if local.startswith('"') and ("/" in local or "\\" in local):
        raise AddressError("Bad address syntax")
    if local.startswith('"') and _PLAIN_LOCAL.fullmatch(local[1:-1]):
        local = local[1:-1]  # RFC 5322 3.4.1: the same mailbox, quoted or not (Postfix does this too)
    return unicodedata.normalize("NFC", f"{local}@{domain}".lower())  # lower() may undo NFC: once more


def normalize_domain(name: str) -> str:
    """A domain name (RFC 5321 4.1.2 labels) lower-cased, without a final dot, international
    ones as A-labels; AddressError if not one.

    The one rule for domains everywhere: SMTP paths, `domains.local`,
    forward and webhook patterns, `relay.transport` keys.
    """
    if not isinstance(name, str):
        raise AddressError(f"not a domain name: {name!r}")
    return _domain(name)


def _domain(name: str) -> str:
    """The canonical form of a domain: A-labels where international (IDNA 2008, UTS 46)."""
    name = name.rstrip(".")
    if not name.isascii() or "xn--" in name.lower():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise AddressError(f"not a domain name: {name[:80]!r}") from None
    if len(name) > 253 or not _DOMAIN_NAME.fullmatch(name):
        raise AddressError(f"not a domain name: {name[:80]!r}")
    return name.lower()


def display_domain(name: str) -> str:
    """A domain as people read it: U-labels (for logs and reports; never for comparing)."""
    try:
        return idna.decode(name) if "xn--" in name else name
    except (idna.IDNAError, UnicodeError, ValueError):
        return name


def _printable_utf8(text: str) -> bool:
    """No control, format (bidi overrides), space or unassigned character in a local part."""
    return all(char.isascii() or unicodedata.category(char) not in _UNPRINTABLE for char in text)


def _printable(text: str) -> str:
    """What a reply may echo of client input: printable ASCII only."""
    return "".join(char if " " <= char <= "~" else "?" for char in text)
