"""Delivery events for `mailgate_event`: one dict per recipient and outcome, sent off the mail's path.

The SMTP session reports what it received and refused, the delivery
transaction what it delivered at once (local mailboxes, inline gateways),
the queue what each attempt did. Nothing is built when no plugin listens,
so events cost nothing unless someone wants them.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from mailgate.core.reply import Reply
from mailgate.hooks.calling import Hooks

_stamp: tuple[int, str] = (0, "")  # the last second formatted: most events share one


class Events:
    """Builds event dicts (the SPEC's fields) and hands them to `mailgate_event`."""

    def __init__(self, hooks: Hooks | None) -> None:
        self._hooks = hooks  # None: nobody listens (a part built without plugins, in a test)

    @property
    def wanted(self) -> bool:
        return self._hooks is not None and self._hooks.implemented("mailgate_event")

    def emit(self, kind: str, *, queue_id: str = "", mail_from: str = "", recipient: str = "",
             route: str = "", reply: Reply | None = None, client: str = "", attempt: int = 0,
             **extra: object) -> None:
        """One event; call `wanted` first where building the arguments costs something.

        `extra` adds keys beyond the SPEC's (`listener` of a received
        message, `relay` and `delay` of a queue attempt) for the operator's
        log lines and metrics (mailgate.ops); plugins may read them too.
        """
        if not self.wanted:
            return
        event: dict[str, Any] = {
            "type": kind, "time": _now(), "queue_id": queue_id, "mail_from": mail_from,
            "recipient": recipient, "route": str(route), "reply": str(reply) if reply is not None else "",
            "client": client, "attempt": attempt, **extra,
        }
        assert self._hooks is not None
        self._hooks.notify("mailgate_event", event=event)


def _now() -> str:
    """ISO 8601 UTC to the second, formatted once per second."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second, timezone.utc).isoformat().replace("+00:00", "Z"))
    return _stamp[1]
