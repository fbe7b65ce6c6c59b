"""The session (one connection) and the envelope (one transaction), as plugins see them.

A session knows the client: its address, HELO name, authenticated user,
whether TLS is on, which listener took it. An envelope is one message's
transaction within it: sender, recipients, ESMTP parameters, the routes
chosen. They are apart, as in aiosmtpd, because a session outlives many
transactions, and because a queued message keeps its session's facts so a
delivery after a restart still knows who sent it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from mailgate.core.route import Route


@dataclass(frozen=True)
class Session:
    """What is known of the client; replaced (not changed) as HELO, STARTTLS and AUTH happen."""

    peer: str = ""  # the client's IP address
    helo: str = ""
    user: str | None = None  # the authenticated address
    tls: bool = False
    listener: str = ""  # the [[listen]] name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Session:
        """The inverse of to_dict; unknown keys (a newer version's) are ignored."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass
class Envelope:
    """One transaction's envelope.

    `mail_from` is "" for the null sender. `rcpt_to` grows as RCPT commands
    are accepted, so a `mailgate_route` call sees the recipients accepted
    before it. `parameters` are MAIL FROM's ESMTP parameters (upper-case
    names; None for a parameter without a value). `routes` maps each
    delivery address to its Route (forwarding may make one recipient many);
    `forwarded` holds the delivery addresses reached through a forward
    (`mailgate_forward`) rather than named at RCPT TO; `recipient_parameters`
    each delivery address's RCPT TO parameters (NOTIFY, ORCPT: RFC 3461),
    when its RCPT had any.
    """

    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    parameters: dict[str, str | None] = field(default_factory=dict)
    session: Session = field(default_factory=Session)
    may_relay: bool = False
    routes: dict[str, Route] = field(default_factory=dict)
    forwarded: set[str] = field(default_factory=set)
    recipient_parameters: dict[str, dict[str, str]] = field(default_factory=dict)

    # The 0.1 names, read from the session.

    @property
    def helo(self) -> str:
        return self.session.helo

    @property
    def client_ip(self) -> str:
        return self.session.peer

    @property
    def authenticated_as(self) -> str | None:
        return self.session.user

    @property
    def listener(self) -> str:
        return self.session.listener
