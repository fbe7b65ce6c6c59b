"""What the listeners and gateways count for the operator where no delivery event says it.

Delivery outcomes are counted from `mailgate_event` (mailgate.ops); sessions,
login failures and webhook requests have no event, so the code that sees
them tells a `Meters`. The default counts nothing, so a part built without
metrics (a test, a plugin author's harness) needs none; mailgate.ops.metrics
implements it with Prometheus metrics.
"""

from __future__ import annotations

from typing import Protocol


class Meters(Protocol):
    """Counting points; each call must cost next to nothing (it runs per session or request)."""

    def session_opened(self, protocol: str, listener: str) -> None:
        """A connection was accepted on a listener; `protocol` is "smtp" or "pop3"."""

    def session_closed(self, protocol: str, listener: str, seconds: float) -> None:
        """A connection ended after `seconds`."""

    def auth_failed(self, protocol: str) -> None:
        """A login was refused: wrong password, unknown user ("smtp" AUTH, "pop3" USER/PASS, AUTH)."""

    def webhook_answered(self, name: str, status: str) -> None:
        """A webhook POST ended: `status` is the HTTP status code, or "error" when none came."""


class NoMeters:
    """Counts nothing."""

    def session_opened(self, protocol: str, listener: str) -> None:
        return None

    def session_closed(self, protocol: str, listener: str, seconds: float) -> None:
        return None

    def auth_failed(self, protocol: str) -> None:
        return None

    def webhook_answered(self, name: str, status: str) -> None:
        return None


NO_METERS: Meters = NoMeters()
