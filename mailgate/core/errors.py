"""Delivery failures: an exception carrying the Reply a client or a bounce is told."""

from __future__ import annotations

from mailgate.core.reply import Reply


class DeliveryError(Exception):
    """A delivery that did not happen, with the SMTP reply to give for it.

    `text` is generic text safe to show a client; `reason` carries detail for
    the log only (paths, errno, plugin names), so nothing internal leaks.
    Plugins raise the two subclasses; `reply` is the whole answer.
    """

    default_code = 451
    default_enhanced = "4.3.0"
    default_text = "Temporary failure, try again later"

    def __init__(
        self,
        text: str = "",
        *,
        code: int | None = None,
        enhanced: str | None = None,
        reason: str = "",
    ) -> None:
        text = text or self.default_text
        self.reply = Reply(code or self.default_code, enhanced or self.default_enhanced, text, reason or text)
        super().__init__(self.reply.reason)

    @classmethod
    def from_reply(cls, reply: Reply) -> DeliveryError:
        """The failure a refusing reply stands for: permanent for 5xx, else temporary."""
        kind = PermanentFailure if reply.permanent else TemporaryFailure
        return kind(reply.text, code=reply.code, enhanced=reply.enhanced or None, reason=reply.reason)

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def enhanced(self) -> str:
        return self.reply.enhanced

    @property
    def text(self) -> str:
        return self.reply.text

    @property
    def reason(self) -> str:
        return self.reply.reason

    @property
    def permanent(self) -> bool:
        """5xx failures are final; anything else is worth another attempt."""
        return self.reply.permanent


class TemporaryFailure(DeliveryError):
    """Raised by a plugin when delivery may succeed later (451 4.3.0, retried)."""


class PermanentFailure(DeliveryError):
    """Raised by a plugin when delivery will never succeed (554 5.3.0, bounced)."""

    default_code = 554
    default_enhanced = "5.3.0"
    default_text = "Delivery failed permanently"
