"""Built-in plugin: the relay policy, asked last: remote mail goes by MX, if allowed."""

from __future__ import annotations

from mailgate import hookimpl
from mailgate.config import GatewayConfig
from mailgate.core.route import MX, Route
from mailgate.core.session import Envelope

RELAY_DENIED = Route("reject:554 5.7.1 Relay access denied")


class RelayPolicy:
    """Any recipient no other plugin claimed and outside `domains.local` is
    relayed, which only authenticated sessions and `relay.allowed_networks`
    may do: mailgate is never an open relay."""

    def __init__(self) -> None:
        self._domains: frozenset[str] = frozenset()

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._domains = frozenset(config.domains.local)

    @hookimpl
    def mailgate_route(self, recipient: str, envelope: Envelope) -> Route | None:
        if recipient.rpartition("@")[2] in self._domains:
            return None  # an unknown local user: the router answers 550 5.1.1
        return MX if envelope.may_relay else RELAY_DENIED
