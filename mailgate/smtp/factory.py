"""One listener's SMTP sessions: building them, admitting their clients, ending them at shutdown."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mailgate.core.reply import Reply
from mailgate.limits.admission import Refusal
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.session import SHUTTING_DOWN, SMTPSession

log = Logger()

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")
CONNECTING_TOO_FAST = Reply(421, "4.7.0", "Too many connections from your address, slow down")
SERVER_FULL = Reply(421, "4.3.2", "Too many connections, try again later")
REFUSALS = {Refusal.PER_IP: TOO_MANY_CONNECTIONS, Refusal.RATE: CONNECTING_TOO_FAST, Refusal.FULL: SERVER_FULL}


class SMTPFactory(Factory["SMTPSession"]):
    """Builds sessions for one `[[listen]]` table, admits or refuses clients, and tracks them for shutdown."""

    noisy = False

    def __init__(self, policy: ListenerPolicy) -> None:
        self.policy = policy
        self.sessions: set[SMTPSession] = set()
        self.stopping = False

    def buildProtocol(self, addr: IAddress | None) -> SMTPSession:
        return SMTPSession(self)

    def admission_refusal(self, ip: str, descriptor: int | None) -> Reply | None | Deferred[Reply | None]:
        """Count the connection with the server's Admission (connectionLost uncounts it); the 421
        for a client over the connection limits, or for any client while stopping. Counts shared
        with other processes (mailgate.limits.state) answer later: a Deferred."""
        refusal = self.policy.admission.enter(ip, descriptor)
        if isinstance(refusal, Deferred):
            return refusal.addCallback(self._refusal_reply, ip)
        return self._refusal_reply(refusal, ip)

    def _refusal_reply(self, refusal: Refusal | None, ip: str) -> Reply | None:
        if refusal is not None:
            log.info("SMTP connection from {ip} refused: {why}", ip=ip, why=refusal.value)
            return REFUSALS[refusal]
        if self.stopping:
            return SHUTTING_DOWN
        return None

    def shut_down(self) -> Deferred[list[tuple[bool, None]]]:
        """Say 421 to every session (after its delivery in flight) and wait for them to end."""
        self.stopping = True
        closing = [session.shut_down() for session in list(self.sessions)]
        return DeferredList(closing, consumeErrors=True)
