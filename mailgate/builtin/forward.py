"""Built-in plugin: `[[forward]]` rules, an address (or a whole domain) sent elsewhere."""

from __future__ import annotations

from mailgate import hookimpl
from mailgate.config import ForwardRule, GatewayConfig


class ForwardRules:
    """First matching rule wins, in the order of the file; `keep` adds the
    original mailbox to the targets (the router then stores a copy there
    without forwarding it again)."""

    def __init__(self) -> None:
        self._rules: tuple[ForwardRule, ...] = ()

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._rules = config.forward

    def _rule_for(self, address: str) -> ForwardRule | None:
        domain = address.rpartition("@")[2]
        for rule in self._rules:
            if rule.match == address or rule.match == f"*@{domain}":
                return rule
        return None

    @hookimpl
    def mailgate_forward(self, recipient: str) -> list[str] | None:
        rule = self._rule_for(recipient)
        if rule is None:
            return None
        return [*rule.to, recipient] if rule.keep else list(rule.to)

    @hookimpl
    def mailgate_verify(self, address: str) -> bool | None:
        return True if self._rule_for(address) is not None else None
