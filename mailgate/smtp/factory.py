"""One listener's SMTP sessions: building them, admitting their clients, ending them at shutdown."""

from __future__ import annotations

from collections import Counter

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory

from mailgate.core.reply import Reply
from mailgate.limits.rate import RateLimiter
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.session import SHUTTING_DOWN, SMTPSession

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")
CONNECTING_TOO_FAST = Reply(421, "4.7.0", "Too many connections from your address, slow down")


class SMTPFactory(Factory["SMTPSession"]):
    """Builds sessions for one `[[listen]]` table, admits or refuses clients, and tracks them for shutdown."""

    noisy = False

    def __init__(self, policy: ListenerPolicy) -> None:
        self.policy = policy
        self.sessions: set[SMTPSession] = set()
        self.per_ip: Counter[str] = Counter()
        self.connection_rate = RateLimiter(policy.config.limits.connection_rate, policy.clock)
        self.stopping = False

    def buildProtocol(self, addr: IAddress | None) -> SMTPSession:
        return SMTPSession(self)

    def admission_refusal(self, ip: str) -> Reply | None:
        """The 421 for a client over its connection limits, or for any client while stopping."""
        if self.per_ip[ip] > self.policy.config.limits.max_connections_per_ip:
            return TOO_MANY_CONNECTIONS
        if self.connection_rate.take(ip):
            return CONNECTING_TOO_FAST
        if self.stopping:
            return SHUTTING_DOWN
        return None

    def shut_down(self) -> Deferred[list[tuple[bool, None]]]:
        """Say 421 to every session (after its delivery in flight) and wait for them to end."""
        self.stopping = True
        closing = [session.shut_down() for session in list(self.sessions)]
        return DeferredList(closing, consumeErrors=True)
