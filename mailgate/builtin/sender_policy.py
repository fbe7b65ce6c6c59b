"""Built-in plugin: who may send as whom, and how fast (`security.sender_login`, `limits.sender_rate`).

An authenticated user sends as itself or the aliases that deliver to it,
not as anyone; and sends at most `limits.sender_rate` messages, counted at
MAIL FROM. Both run on `mailgate_mail_from`, after users' plugins (which
are registered later and so asked first), and the rate is spent last, so a
sender refused for another reason is not charged for it.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from mailgate import hookimpl
from mailgate.config import GatewayConfig, SenderRate
from mailgate.core.reply import Reply
from mailgate.core.session import Session
from mailgate.limits import state

NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
STATE_UNAVAILABLE = Reply(451, "4.3.0", "Temporary failure, try again later")


class SenderPolicy:
    """One rate limiter for the whole server: every listener's sessions count together.

    `process_wide`: a reload configures this object again (mailgate.builtin
    keeps it), and the counts go on while `limits.sender_rate` is unchanged,
    so that a reload never hands every sender a fresh allowance.
    """

    process_wide = True

    def __init__(self) -> None:
        self._owners: dict[str, frozenset[str]] = {}
        self._login = "owned"
        self._rate: Any = None  # a RateLimiter, or a SharedRate answering later
        self._rate_setting: SenderRate | None = None

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig, reactor: IReactorTime) -> None:
        self._owners = owned_senders(config)
        self._login = config.security.sender_login
        if self._rate is None or self._rate_setting != config.limits.sender_rate:
            self._rate = state.rate_limiter("sender", config.limits.sender_rate, reactor)
        self._rate_setting = config.limits.sender_rate

    @hookimpl
    def mailgate_mail_from(self, session: Session, sender: str) -> Reply | Deferred[Reply | None] | None:
        shared = state.current()
        if shared is not None and not shared.available():
            return STATE_UNAVAILABLE  # past state.fallback_time: limits cannot be kept, so no mail
        user = session.user
        if user is None:
            return None
        if sender and self._login == "owned" and sender != user and user not in self._owners.get(sender, ()):
            return NOT_OWNED
        wait = self._rate.take(user) if self._rate is not None else 0.0
        if isinstance(wait, Deferred):  # counted by the master or in Redis (mailgate.limits.state)
            return wait.addCallback(rate_refusal)
        return rate_refusal(wait)


def rate_refusal(wait: float) -> Reply | None:
    if wait:
        return Reply(450, "4.7.1", f"Sender rate limit exceeded, try again in {math.ceil(wait)} seconds")
    return None


def owned_senders(config: GatewayConfig) -> dict[str, frozenset[str]]:
    """Sender address -> the users who may use it besides itself: the targets of an
    exact forward rule (an alias delivering to them)."""
    owners: dict[str, frozenset[str]] = {}
    for rule in config.forward:
        if not rule.match.startswith("*@"):
            owners[rule.match] = owners.get(rule.match, frozenset()) | frozenset(rule.to)
    return owners
