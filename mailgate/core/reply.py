"""SMTP replies (RFC 5321 4.2, RFC 3463): the one shape every refusal, answer and result takes.

A reply is a code, an enhanced status code, the text a client may see and
a reason only the log sees. Refusals at RCPT, the answer at the end of
DATA, a plugin's `reject:` route, a remote server's answer in a bounce and
a failed delivery all use it, so nothing has to guess whether the enhanced
code is a field or the start of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_LEADING_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?: +|$)")
_REPLY = re.compile(r"([2-5])(\d\d)(?: (.*))?", re.DOTALL)


class ReplyError(ValueError):
    """Text that is not a valid reply; the message says why."""


@dataclass(frozen=True)
class Reply:
    """One reply. `text` may hold several lines separated by "\\n".

    `enhanced` is "" for replies that carry none (the greeting, EHLO);
    otherwise RFC 2034 wants it at the start of every line, which `wire()`
    does. `reason` is for the log only: paths, plugin names, errno.
    """

    code: int
    enhanced: str = ""
    text: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ReplyError(f"reply code {self.code} is not 2xx-5xx")
        if self.enhanced:
            match = _ENHANCED.fullmatch(self.enhanced)
            if match is None or match.group(1) != str(self.code)[0]:
                raise ReplyError(f"enhanced code {self.enhanced!r} does not fit reply code {self.code}")

    @classmethod
    def parse(cls, line: str, reason: str = "") -> Reply:
        """"550 5.7.1 not here" -> Reply(550, "5.7.1", "not here"); ReplyError if malformed.

        The enhanced code is optional; when present its class must match
        the reply code's (RFC 3463 2).
        """
        match = _REPLY.fullmatch(line.strip())
        if match is None:
            raise ReplyError(f"not an SMTP reply (like '550 5.7.1 text'): {line[:80]!r}")
        code, rest = int(match.group(1) + match.group(2)), match.group(3) or ""
        enhanced, text = split_enhanced(rest, code)
        return cls(code, enhanced, text, reason)

    @classmethod
    def from_lines(cls, code: int, lines: tuple[str, ...] | list[str], reason: str = "") -> Reply:
        """A reply read off the wire: an enhanced code leading each line is taken out of each."""
        enhanced, first = split_enhanced(lines[0] if lines else "", code)
        rest = [split_enhanced(line, code)[1] if enhanced else line for line in lines[1:]]
        return cls(code, enhanced, "\n".join([first, *rest]), reason)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def temporary(self) -> bool:
        """Anything neither positive nor 5xx: fail closed, try again later."""
        return 400 <= self.code < 500

    @property
    def one_line(self) -> str:
        """The text on one line, for logs, `last_error` and a DSN's Diagnostic-Code."""
        return " ".join(self.text.split("\n")).strip()

    def __str__(self) -> str:
        return " ".join(part for part in (str(self.code), self.enhanced, self.one_line) if part)

    def wire(self) -> bytes:
        """The reply as sent: one CRLF line per text line, `code-` on all but the last."""
        lines = self.text.split("\n")
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = [f"{self.code}-{prefix}{line}\r\n" for line in lines[:-1]]
        out.append(f"{self.code} {prefix}{lines[-1]}\r\n")
        return "".join(out).encode("ascii", "replace")


def split_enhanced(text: str, code: int) -> tuple[str, str]:
    """("5.1.1", "rest") when `text` starts with an enhanced code of `code`'s class, else ("", text)."""
    match = _LEADING_ENHANCED.match(text)
    if match is None or match.group(1)[0] != str(code)[0]:
        return "", text
    return match.group(1), text[match.end():]
