"""What a `mailgate_message` plugin may do to a message: add header fields, replace it, reroute it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MessageChange:
    """Header fields to add at the top, a whole new message (CRLF bytes), new routes.

    `headers` are (name, value) pairs added above the existing header, in
    order, after mailgate's own trace fields; a value may be folded with
    CRLF followed by white space. `message`, when given, replaces the
    message as received (the added headers then go on top of it). Either
    is checked again against the size and line rules of DATA. `routes`
    maps some of the envelope's recipients to new route strings (routing by
    content, e.g. by a header): anything but `reject:`, which would need a
    reply per recipient that DATA cannot give.
    """

    headers: list[tuple[str, str]] = field(default_factory=list)
    message: bytes | None = None
    routes: dict[str, str] = field(default_factory=dict)
