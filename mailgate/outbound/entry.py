"""A queued message's state, as its env/ file holds it, and how that file is read back.

The records are plain dataclasses written as JSON (`to_json`). Reading is
strict where it matters and lenient where versions differ: an entry
written by an older version lacks the newer fields and gets their
defaults, a newer version's fields are ignored, and anything else that
does not fit (not JSON, a field missing or of another type, an unknown
status or route) is a DamagedEntry, which the spool sets aside instead of
crashing every attempt on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from mailgate.core.route import Route, RouteError

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MISSING_MESSAGE = "message file missing"


class DamagedEntry(Exception):
    """A queue entry that cannot be used as it is; the text says why (log, `queue list`)."""


@dataclass
class RecipientState:
    address: str
    route: str
    status: str = PENDING
    code: int | None = None  # the last reply's code, for the DSN
    enhanced: str | None = None
    diagnostic: str | None = None  # the last reply's text or our reason
    remote_mta: str | None = None
    reporting_mta: str | None = None  # the pool's EHLO name it was last tried with; None: server.hostname
    notify: str | None = None  # RCPT TO's NOTIFY (RFC 3461); None: failures and delays are reported
    orcpt: str | None = None  # RCPT TO's ORCPT, as sent ("rfc822;bob+2Bx@example.test")

    def dsn_parameters(self) -> dict[str, str]:
        """The RCPT TO parameters to pass on to a next hop that offers DSN."""
        return {name: value for name, value in (("NOTIFY", self.notify), ("ORCPT", self.orcpt)) if value}


@dataclass
class QueuedMessage:
    id: str
    sender: str  # "" for the null sender: never bounced to
    arrived: float  # unix seconds
    recipients: list[RecipientState]
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    warned: bool = False  # a delay warning was sent
    session: dict[str, Any] = field(default_factory=dict)  # core.Session.to_dict() of the sending session
    parameters: dict[str, str | None] = field(default_factory=dict)  # MAIL FROM's ESMTP parameters
    extra: dict = field(default_factory=dict)  # room for plugins' bookkeeping
    message_size: int | None = None  # bytes of msg/<id> as queued; None in entries queued by 0.1
    message_sha256: str | None = None  # its SHA-256, hex
    message_lines: int | None = None  # its LF count: size + lines is the CRLF size, for SIZE= without a read
    held_since: float | None = None  # `mailgate queue hold`: unix seconds since; None when not held
    held_seconds: float = 0.0  # time spent held before, which does not count against relay.max_queue_time

    @property
    def held(self) -> bool:
        return self.held_since is not None

    @property
    def wire_size(self) -> int | None:
        """The message's CRLF octets, if the queue recorded its length and lines (0.1 did not)."""
        if self.message_size is None or self.message_lines is None:
            return None
        return self.message_size + self.message_lines

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    def failed(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == FAILED]

    def hold(self, now: float) -> None:
        """`mailgate queue hold`: no attempt, and no expiry, until released."""
        if self.held_since is None:
            self.held_since = now

    def release(self, now: float) -> None:
        """`mailgate queue release`: due now; the time held is not counted against relay.max_queue_time."""
        if self.held_since is not None:
            self.held_seconds += max(0.0, now - self.held_since)
            self.held_since = None
        self.next_attempt = now

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, queue_id: str | None = None) -> QueuedMessage:
        """Entries written by an older version lack the newer fields: they get the defaults;
        a newer version's fields are ignored. DamagedEntry for anything else that does
        not fit: not JSON, a field missing or of another type, another entry's id."""
        if not data.strip():
            raise DamagedEntry("envelope file is empty")
        try:
            raw = json.loads(data)
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError alike
            raise DamagedEntry(f"envelope file is not JSON: {error}") from None
        fields = _checked(raw, _ENTRY_FIELDS, "envelope")
        if queue_id is not None and fields["id"] != queue_id:
            raise DamagedEntry(f"envelope names another id: {str(fields['id'])[:40]!r}")
        fields["recipients"] = [_recipient(item) for item in fields["recipients"]]
        if not fields["recipients"]:
            raise DamagedEntry("envelope has no recipients")
        return cls(**fields)


_NONE = type(None)
_ENTRY_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {  # name: (JSON types, required)
    "id": ((str,), True), "sender": ((str,), True), "arrived": ((int, float), True),
    "recipients": ((list,), True), "attempts": ((int,), False), "next_attempt": ((int, float), False),
    "last_error": ((str, _NONE), False), "warned": ((bool,), False), "session": ((dict,), False),
    "parameters": ((dict,), False), "extra": ((dict,), False), "message_size": ((int, _NONE), False),
    "message_sha256": ((str, _NONE), False), "message_lines": ((int, _NONE), False),
    "held_since": ((int, float, _NONE), False),
    "held_seconds": ((int, float), False),
}
_RECIPIENT_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "address": ((str,), True), "route": ((str,), True), "status": ((str,), False),
    "code": ((int, _NONE), False), "enhanced": ((str, _NONE), False), "diagnostic": ((str, _NONE), False),
    "remote_mta": ((str, _NONE), False), "reporting_mta": ((str, _NONE), False),
    "notify": ((str, _NONE), False), "orcpt": ((str, _NONE), False),
}


def _checked(raw: object, spec: dict[str, tuple[tuple[type, ...], bool]], what: str) -> dict[str, Any]:
    """The fields of `spec` found in a JSON object, each of its type; DamagedEntry otherwise."""
    if not isinstance(raw, dict):
        raise DamagedEntry(f"{what} is not a JSON object")
    found = {}
    for name, (types, required) in spec.items():
        if name not in raw:
            if required:
                raise DamagedEntry(f"{what} lacks {name!r}")
            continue
        if not isinstance(raw[name], types):
            raise DamagedEntry(f"{what} field {name!r} is a {type(raw[name]).__name__}")
        found[name] = raw[name]
    return found


def _recipient(raw: object) -> RecipientState:
    recipient = RecipientState(**_checked(raw, _RECIPIENT_FIELDS, "recipient"))
    if recipient.status not in (PENDING, DELIVERED, FAILED):
        raise DamagedEntry(f"recipient status {recipient.status[:20]!r} is none of pending, delivered, failed")
    try:
        Route(recipient.route)
    except RouteError as error:
        raise DamagedEntry(f"recipient route: {error}") from None
    return recipient
