"""SPF record syntax (RFC 7208 sections 4.6, 5, 6 and 12) and macro expansion (section 7): pure functions.

A record is parsed whole before anything is evaluated, because a syntax
error anywhere makes the result `permerror` without further lookups (RFC
7208 4.6). Mechanism and modifier names are case-insensitive; macro
strings keep their case until expanded.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
DNS_TERMS = frozenset({"include", "a", "mx", "ptr", "exists"})  # and redirect: the 10-lookup limit (4.6.4)
MAX_DOMAIN = 253  # RFC 7208 7.3: longer expansions lose labels on the left

_VERSION = re.compile(r"v=spf1(?: |$)", re.IGNORECASE)
_TERM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9]\d?))?(?://(0|[1-9]\d{0,2}))?$")
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))", re.IGNORECASE)
_TOPLABEL = re.compile(r"(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_LITERAL = re.compile(r"[\x21-\x24\x26-\x7e]*")  # visible characters except "%"
EXPLANATION_ONLY = frozenset("crt")  # macro letters allowed only in exp= (7.2)


class PermError(Exception):
    """The record (or the evaluation) breaks a rule of RFC 7208: the result is `permerror`."""


@dataclass(frozen=True)
class Term:
    """One directive (`qualifier` + mechanism) or modifier (`qualifier` "=") of a record."""

    qualifier: str  # "+", "-", "~", "?"; "=" for a modifier
    name: str  # lower-case
    argument: str = ""  # domain-spec, network or macro string; "" when absent
    cidr4: int = 32
    cidr6: int = 128

    @property
    def result(self) -> str:
        return QUALIFIERS[self.qualifier]


def is_spf_record(text: bytes) -> bool:
    """Whether a TXT string is an SPF record: "v=spf1" then a space or the end (RFC 7208 4.5)."""
    return _VERSION.match(text.decode("latin-1")) is not None


def parse_record(text: str) -> tuple[list[Term], Term | None]:
    """(the mechanisms in order, the redirect modifier or None); PermError on any syntax error."""
    words = text.split(" ")
    if not _VERSION.match(words[0] + " "):
        raise PermError("not an SPF record")
    mechanisms: list[Term] = []
    modifiers: dict[str, Term] = {}
    for word in words[1:]:
        if not word:
            continue
        term = parse_term(word)
        if term.qualifier != "=":
            mechanisms.append(term)
        elif term.name in ("redirect", "exp") and term.name in modifiers:
            raise PermError(f"{term.name}= given twice")  # RFC 7208 6
        else:
            modifiers[term.name] = term
    return mechanisms, modifiers.get("redirect")


def parse_term(word: str) -> Term:
    match = _TERM.fullmatch(word)
    if match is None:
        raise PermError(f"not a term: {word!r:.60}")
    qualifier, name, rest = match[1], match[2].lower(), match[3]
    if rest.startswith("="):
        if qualifier:
            raise PermError(f"a modifier takes no qualifier: {word!r:.60}")
        if name in ("redirect", "exp"):
            check_domain_spec(rest[1:])
        else:
            check_macro_string(rest[1:])
        return Term("=", name, rest[1:])
    if name not in MECHANISMS:
        raise PermError(f"unknown mechanism {name!r:.40}")
    return _mechanism(qualifier or "+", name, rest, word)


def _mechanism(qualifier: str, name: str, rest: str, word: str) -> Term:
    if name == "all":
        if rest:
            raise PermError(f"all takes no argument: {word!r:.60}")
        return Term(qualifier, name)
    if name in ("ip4", "ip6"):
        return _network(qualifier, name, rest, word)
    cidr4, cidr6 = 32, 128
    if name in ("a", "mx"):
        cidr = _DUAL_CIDR.search(rest)
        assert cidr is not None  # the pattern matches the empty tail
        cidr4 = int(cidr[1]) if cidr[1] else 32
        cidr6 = int(cidr[2]) if cidr[2] else 128
        if cidr4 > 32 or cidr6 > 128:
            raise PermError(f"CIDR length out of range: {word!r:.60}")
        rest = rest[: cidr.start()]
    if name in ("include", "exists") and not rest.startswith(":"):
        raise PermError(f"{name} needs a domain: {word!r:.60}")
    if rest and not rest.startswith(":"):
        raise PermError(f"not a term: {word!r:.60}")
    if rest:
        check_domain_spec(rest[1:])
    return Term(qualifier, name, rest[1:], cidr4, cidr6)


def _network(qualifier: str, name: str, rest: str, word: str) -> Term:
    if not rest.startswith(":"):
        raise PermError(f"{name} needs a network: {word!r:.60}")
    address, slash, length = rest[1:].partition("/")
    family, maximum = (ipaddress.IPv4Address, 32) if name == "ip4" else (ipaddress.IPv6Address, 128)
    try:
        family(address)
    except ValueError:
        raise PermError(f"not an {name} address: {word!r:.60}") from None
    if slash and not re.fullmatch(r"0|[1-9]\d{0,2}", length) or slash and int(length) > maximum:
        raise PermError(f"CIDR length out of range: {word!r:.60}")
    bits = int(length) if slash else maximum
    return Term(qualifier, name, address, bits if name == "ip4" else 32, bits if name == "ip6" else 128)


def check_macro_string(text: str, explanation: bool = False) -> None:
    """PermError unless `text` is a macro-string (RFC 7208 7.1)."""
    position = 0
    for match in _MACRO.finditer(text):
        if not _LITERAL.fullmatch(text, position, match.start()):
            raise PermError(f"bad macro string: {text!r:.60}")
        letter = match[1]
        if letter and letter.lower() in EXPLANATION_ONLY and not explanation:
            raise PermError(f"%{{{letter}}} is allowed only in exp=: {text!r:.60}")
        if match[2] == "0":
            raise PermError(f"a macro keeps at least one part: {text!r:.60}")
        position = match.end()
    if not _LITERAL.fullmatch(text, position):
        raise PermError(f"bad macro string: {text!r:.60}")


def check_domain_spec(text: str) -> None:
    """PermError unless `text` is a domain-spec: a macro string ending in a top label or a macro."""
    if not text:
        raise PermError("empty domain")
    check_macro_string(text)
    if _ends_with_macro(text):
        return
    labels = text.removesuffix(".").split(".")
    if len(labels) < 2 or not _TOPLABEL.fullmatch(labels[-1]):
        raise PermError(f"not a domain: {text!r:.60}")


def _ends_with_macro(text: str) -> bool:
    return any(match.end() == len(text) for match in _MACRO.finditer(text))


@dataclass(frozen=True)
class MacroContext:
    """What macros expand to (RFC 7208 7.2): the sender, the current domain, the client."""

    sender: str  # local@domain (postmaster@helo when MAIL FROM is null)
    domain: str
    ip: str
    helo: str

    def letter(self, letter: str) -> str:
        local, _, sender_domain = self.sender.rpartition("@")
        address = ipaddress.ip_address(self.ip)
        values: dict[str, Callable[[], str]] = {
            "s": lambda: self.sender, "l": lambda: local or "postmaster", "o": lambda: sender_domain,
            "d": lambda: self.domain, "h": lambda: self.helo, "p": lambda: "unknown",
            "v": lambda: "in-addr" if address.version == 4 else "ip6",
            "i": lambda: self.ip if address.version == 4 else ".".join(address.exploded.replace(":", "")),
        }
        return values[letter]()


def expand(text: str, context: MacroContext) -> str:
    """A macro string with its macros replaced (RFC 7208 7.3)."""
    def replace(match: re.Match[str]) -> str:
        if match[5]:
            return "%"
        if match[6]:
            return " "
        if match[7]:
            return "%20"
        letter = match[1]
        value = context.letter(letter.lower())
        if match[2] or match[3] or match[4]:
            parts = re.split("[" + re.escape(match[4] or ".") + "]", value)
            if match[3]:
                parts.reverse()
            if match[2]:
                parts = parts[-int(match[2]):]
            value = ".".join(parts)
        return quote(value, safe="") if letter.isupper() else value
    return _MACRO.sub(replace, text)


def expand_domain(text: str, context: MacroContext) -> str:
    """A domain-spec expanded into a name to look up, cut to 253 characters from the left."""
    name = expand(text, context).rstrip(".")
    while len(name) > MAX_DOMAIN and "." in name:
        name = name.split(".", 1)[1]
    return name.lower()
