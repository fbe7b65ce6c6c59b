"""Built-in plugin: `relay.transport`, static routes by recipient domain."""

from __future__ import annotations

from typing import Mapping

from mailgate import hookimpl
from mailgate.config import GatewayConfig
from mailgate.core.route import Route


class TransportTable:
    """Answers first among the built-ins: a transport entry beats local delivery,
    as Postfix's transport(5) table does, and makes its domain mailgate's own."""

    def __init__(self) -> None:
        self._table: Mapping[str, Route] = {}

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._table = config.relay.transport

    @hookimpl
    def mailgate_route(self, recipient: str) -> Route | None:
        return self._table.get(recipient.rpartition("@")[2])
