"""Dedicated sending addresses ([[relay.pool]]): which pool a message leaves by, and its next source address."""

from __future__ import annotations

from typing import Sequence

from twisted.logger import Logger

from mailgate.config import PoolConfig
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks

log = Logger()


class Pool:
    """A pool's addresses, used in turn, and the name it says in EHLO."""

    def __init__(self, config: PoolConfig, default_helo: str) -> None:
        self.name = config.name
        self.addresses = config.addresses
        self.helo = config.helo or default_helo
        self.senders = config.senders
        self._next = 0

    def sources(self, ipv6: bool) -> list[str]:
        """This pool's addresses of the remote's family, the next in turn first (then the others, as fallbacks)."""
        family = [address for address in self.addresses if (":" in address) == ipv6]
        if not family:
            return []
        start = self._next % len(family)
        self._next += 1
        return family[start:] + family[:start]

    def takes(self, sender: str) -> bool:
        domain = sender.rpartition("@")[2].lower()
        return any(pattern == sender.lower() or (pattern.startswith("*@") and pattern[2:] == domain)
                   for pattern in self.senders)


class Pools:
    """The configured pools; `choose` asks plugins (mailgate_pool), then the `senders` patterns."""

    def __init__(self, configs: Sequence[PoolConfig], default_helo: str, hooks: Hooks | None = None) -> None:
        self._pools = {config.name: Pool(config, default_helo) for config in configs}
        self._hooks = hooks

    def __bool__(self) -> bool:
        return bool(self._pools)

    async def choose(self, envelope: Envelope) -> Pool | None:
        """HookFailed when the plugin fails: the caller defers (fail closed, not from another address)."""
        if self._hooks is not None and self._hooks.implemented("mailgate_pool"):
            name = await self._hooks.first("mailgate_pool", envelope=envelope)
            if name is not None:
                pool = self._pools.get(str(name))
                if pool is not None:
                    return pool
                log.warn("relay: a mailgate_pool plugin chose {name!r}, which no [[relay.pool]] is named; "
                         "using the senders patterns", name=name)
        return next((pool for pool in self._pools.values() if pool.takes(envelope.mail_from)), None)


NO_POOLS = Pools((), "")
