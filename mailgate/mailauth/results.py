"""The Authentication-Results header field (RFC 8601): the checks' results, written and read back.

mailgate writes one field per message it checks, at the top, naming its
authserv-id (`authentication.authserv_id`, else `server.hostname`):

    Authentication-Results: mx.example.test;
        spf=pass smtp.mailfrom=bob@remote.test;
        dkim=pass header.d=remote.test header.s=sel;
        dmarc=pass (p=reject) header.from=remote.test

Reasons and the DMARC policy are comments. Whatever needs the results
later (the webhook JSON, a plugin on a delivery hook, a queued delivery
after a restart) reads them back from that field of the stored message:
the field travels with the message, so nothing else has to. Only a field
with our authserv-id counts; any such field that arrived with a message
was removed before ours was added, so the topmost one is ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailgate.mailauth.headers import header_fields, unfold

if TYPE_CHECKING:
    from mailgate.config import GatewayConfig

HEADER = "Authentication-Results"
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+")  # RFC 8601 pvalue, and a token besides
_COMMENT_UNSAFE = re.compile(r"[^\x20-\x7e]|[()\\]")
REASON_CHARS = 120


@dataclass(frozen=True)
class SPFResult:
    result: str
    identity: str  # "mailfrom" | "helo": which one was checked
    value: str  # the address (or HELO name) checked
    domain: str
    reason: str = ""


@dataclass(frozen=True)
class DKIMResult:
    result: str
    domain: str  # d=, "" when unreadable
    selector: str  # s=
    reason: str = ""


@dataclass(frozen=True)
class DMARCResult:
    result: str
    from_domain: str
    policy: str = ""  # the policy that applies to this message: none | quarantine | reject ("" without one)
    reason: str = ""


@dataclass(frozen=True)
class Results:
    """What the checks found; a check not run is None (DKIM: no signature is an empty tuple)."""

    spf: SPFResult | None = None
    dkim: tuple[DKIMResult, ...] | None = None
    dmarc: DMARCResult | None = None

    def header_value(self, authserv_id: str) -> str:
        """The field's value, one result per line (folded with CRLF and a tab)."""
        parts = []
        if self.spf is not None:
            parts.append(_resinfo("spf", self.spf.result, self.spf.reason,
                                  [(f"smtp.{self.spf.identity}", self.spf.value)]))
        if self.dkim is not None:
            parts += [_resinfo("dkim", d.result, d.reason, [("header.d", d.domain), ("header.s", d.selector)])
                      for d in self.dkim] or ["dkim=none"]
        if self.dmarc is not None:
            comment = " ".join(filter(None, [f"p={self.dmarc.policy}" if self.dmarc.policy else "",
                                             self.dmarc.reason]))
            parts.append(_resinfo("dmarc", self.dmarc.result, comment, [("header.from", self.dmarc.from_domain)]))
        return ";\r\n\t".join([authserv_id, *(parts or ["none"])])

    def as_json(self) -> dict[str, Any]:
        """The webhook JSON's `authentication` object (SPEC: spf, dkim, dmarc)."""
        return {
            "spf": self.spf.result if self.spf is not None else None,
            "dkim": None if self.dkim is None else [
                {"domain": d.domain, "selector": d.selector, "result": d.result} for d in self.dkim],
            "dmarc": self.dmarc.result if self.dmarc is not None else None,
        }


def _resinfo(method: str, result: str, comment: str, properties: list[tuple[str, str]]) -> str:
    words = [f"{method}={result}"]
    if comment:
        words.append(f"({_COMMENT_UNSAFE.sub('?', comment)[:REASON_CHARS]})")
    words += [f"{name}={_value(value)}" for name, value in properties if value]
    return " ".join(words)


def _value(text: str) -> str:
    if _PLAIN_VALUE.fullmatch(text):
        return text
    return '"' + re.sub(r'(["\\])', r"\\\1", re.sub(r"[^\x20-\x7e]", "?", text)) + '"'


def our_authserv_id(config: GatewayConfig) -> str:
    return config.authentication.authserv_id or config.server.hostname


# --- reading -------------------------------------------------------------------------------


def tokens(value: str) -> list[str]:
    """The words of a field value: comments dropped, quoted strings unquoted, ";" a word of its own."""
    words: list[str] = []
    current, depth, quoted, escaped = "", 0, False, False
    for char in value:
        if escaped:
            current += char if depth == 0 else ""
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
            current += char if quoted else ""
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif char == '"':
            quoted = True
        elif char in " \t\r\n;":
            words += [current] if current else []
            words += [";"] if char == ";" else []
            current = ""
        else:
            current += char
    return words + ([current] if current else [])


def parse(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """(authserv-id, [(method, result, {ptype.property: value})]) of one field's value."""
    merged: list[str] = []
    for word in tokens(value):  # "method = result" may have spaces around "=" (CFWS)
        if merged and word != ";" and merged[-1] != ";" and (word.startswith("=") or merged[-1].endswith("=")):
            merged[-1] += word
        else:
            merged.append(word)
    statements: list[list[str]] = [[]]
    for word in merged:
        if word == ";":
            statements.append([])
        else:
            statements[-1].append(word)
    authserv = statements[0][0] if statements[0] else ""
    found = []
    for words in statements[1:]:
        if not words or "=" not in words[0]:
            continue
        method, _, result = words[0].partition("=")
        properties = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        found.append((method.lower(), result.lower(), properties))
    return authserv, found


def claims(value: bytes, authserv_id: str) -> bool:
    """Whether a raw Authentication-Results value names `authserv_id` (case-insensitively)."""
    words = tokens(unfold(value).decode("utf-8", "replace"))
    return bool(words) and words[0].lower() == authserv_id.lower()


def authentication_results(message: bytes, authserv_id: str) -> dict[str, Any] | None:
    """The results mailgate recorded in `message`, as the webhook JSON gives them, or None.

    `message` is a whole message (CRLF or LF line ends); `authserv_id` is the
    server's (`authentication.authserv_id`, else `server.hostname`). None
    when no Authentication-Results field of ours is there: the checks were
    off, or the client had authenticated.
    """
    for field in header_fields(message):
        if field.name == "authentication-results" and claims(field.value, authserv_id):
            return _as_json(parse(unfold(field.value).decode("utf-8", "replace"))[1])
    return None


def _as_json(statements: list[tuple[str, str, dict[str, str]]]) -> dict[str, Any]:
    document: dict[str, Any] = {"spf": None, "dkim": None, "dmarc": None}
    for method, result, properties in statements:
        if method in ("spf", "dmarc"):
            document[method] = result
        elif method == "dkim":
            signatures = document["dkim"] if document["dkim"] is not None else []
            if result != "none" or properties:
                signatures.append({"domain": properties.get("header.d"), "selector": properties.get("header.s"),
                                   "result": result})
            document["dkim"] = signatures
    return document
