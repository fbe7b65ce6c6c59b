"""Delivery failures: what a client or a bounce is told, and what the log is told."""

from __future__ import annotations


class DeliveryError(Exception):
    """A delivery that did not happen, with the SMTP reply to give for it.

    `reply` is generic text safe to show a client; `reason` carries detail for
    the log only (paths, errno, plugin names), so nothing internal leaks.
    """

    default_code = 451
    default_enhanced = "4.3.0"
    default_reply = "Temporary failure, try again later"

    def __init__(
        self,
        reply: str = "",
        *,
        code: int | None = None,
        enhanced: str | None = None,
        reason: str = "",
    ) -> None:
        self.code = code or self.default_code
        self.enhanced = enhanced or self.default_enhanced
        self.reply = reply or self.default_reply
        self.reason = reason or self.reply
        super().__init__(self.reason)

    @property
    def permanent(self) -> bool:
        """5xx failures are final; anything else is worth another attempt."""
        return self.code >= 500

    def smtp_reply(self) -> tuple[int, str]:
        """The (code, text) pair an SMTP session answers with."""
        return self.code, f"{self.enhanced} {self.reply}"


class TemporaryFailure(DeliveryError):
    """Raised by a plugin when delivery may succeed later (451 4.3.0, retried)."""


class PermanentFailure(DeliveryError):
    """Raised by a plugin when delivery will never succeed (554 5.3.0, bounced)."""

    default_code = 554
    default_enhanced = "5.3.0"
    default_reply = "Delivery failed permanently"
