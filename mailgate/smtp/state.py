"""One SMTP connection's state as its commands see it: the client, the open transaction, the error count.

Everything a command handler may read or change about its connection is
here, typed, in one small object; the session protocol keeps only what
concerns the socket (buffers, timers, the reply batch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mailgate.core.session import Envelope, Session
from mailgate.smtp.chunk_reader import ChunkReader


@dataclass(slots=True)
class SessionState:
    """The per-connection state command handlers share.

    `session` is frozen and replaced, never changed, when HELO, STARTTLS or
    AUTH teaches something new about the client: an Envelope opened earlier
    keeps the facts it was opened with.
    """

    session: Session
    envelope: Envelope | None = None  # the open transaction: MAIL to the end of DATA
    esmtp: bool = False  # the client greeted with EHLO (the Received: header says ESMTP)
    bad_commands: int = 0  # 5xx syntax and sequence errors so far (limits.max_bad_commands)
    # BDAT: the message of the transaction it began with; a new envelope (MAIL after RSET) makes it stale
    chunks: tuple[Envelope, ChunkReader] | None = None

    def greet(self, helo: str, esmtp: bool) -> None:
        """HELO/EHLO: a new name, and any transaction dropped (RFC 5321 4.1.4)."""
        self.session = replace(self.session, helo=helo)
        self.esmtp, self.envelope = esmtp, None

    def start_tls(self) -> None:
        """Forget what the client said in the clear (RFC 3207 4.2): greeting, login, transaction."""
        self.session = replace(self.session, helo="", user=None, tls=True)
        self.esmtp, self.envelope = False, None

    def authenticated(self, user: str) -> None:
        self.session = replace(self.session, user=user)
