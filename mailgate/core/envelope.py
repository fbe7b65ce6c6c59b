"""The SMTP envelope: who sent, to whom, and what the session knows of the client."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Envelope:
    """One transaction's envelope as plugins see it.

    `mail_from` is "" for the null sender. `rcpt_to` grows as RCPT commands are
    accepted, so a `mailgate_route` call sees the recipients accepted before it.
    """

    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    helo: str = ""
    client_ip: str = ""
    authenticated_as: str | None = None
    may_relay: bool = False
    listener: str = ""
    routes: dict[str, str] = field(default_factory=dict)  # recipient -> route string
