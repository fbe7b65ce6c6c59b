"""What a `mailgate_message` plugin may do to a message: add header fields, or replace it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MessageChange:
    """Header fields to add at the top, and/or a whole new message (CRLF bytes).

    `headers` are (name, value) pairs added above the existing header, in
    order, after mailgate's own trace fields; a value may be folded with
    CRLF followed by white space. `message`, when given, replaces the
    message as received (the added headers then go on top of it). Either
    is checked again against the size and line rules of DATA.
    """

    headers: list[tuple[str, str]] = field(default_factory=list)
    message: bytes | None = None
