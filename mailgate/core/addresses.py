"""RFC 5321 paths: parsing MAIL FROM / RCPT TO arguments into safe addresses."""

from __future__ import annotations

import re

_ATEXT = r"[A-Za-z0-9!#$%&'*+=?^_`{|}~-]"  # RFC 5322 atext without "/" (never a path part)
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x2e\x30-\x5a\x5e-\x7e]+\]"  # dcontent without "/", as _ATEXT
_PLAIN_LOCAL = re.compile(_DOT_STRING)  # what needs no quotes: "alice" is alice
_DOMAIN_NAME = re.compile(_DOMAIN)
_MAILBOX = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})")
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
    local, domain = match.group("local"), match.group("domain").rstrip(".")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError("Local part too long")
    if local.startswith('"') and ("/" in local or "\\" in local):
        raise AddressError("Bad address syntax")
    if local.startswith('"') and _PLAIN_LOCAL.fullmatch(local[1:-1]):
        local = local[1:-1]  # RFC 5322 3.4.1: the same mailbox, quoted or not (Postfix does this too)
    return f"{local}@{domain}".lower()


def normalize_domain(name: str) -> str:
    """A domain name (RFC 5321 4.1.2 labels) lower-cased, without a final dot; AddressError if not one.

    The one rule for domains everywhere: SMTP paths, `domains.local`,
    forward and webhook patterns, `relay.transport` keys.
    """
    if not isinstance(name, str) or len(name) > 253 or not _DOMAIN_NAME.fullmatch(name):
        raise AddressError(f"not a domain name: {name!r}")
    return name.rstrip(".").lower()


def _printable(text: str) -> str:
    """What a reply may echo of client input: printable ASCII only."""
    return "".join(char if " " <= char <= "~" else "?" for char in text)
