"""Built-in plugin: users of the accounts file in `domains.local` have mailboxes."""

from __future__ import annotations

from mailgate import hookimpl
from mailgate.config import GatewayConfig
from mailgate.core.route import LOCAL, Route
from mailgate.accounts.users_file import Accounts


class LocalMailboxes:
    """Routes a recipient to `local` when the users file knows it.

    An unknown address in a local domain gets no answer here, so the router
    refuses it with 550 5.1.1 unless a later-registered plugin claims it.
    """

    def __init__(self) -> None:
        self._domains: frozenset[str] = frozenset()
        self._accounts: Accounts | None = None

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._domains = frozenset(config.domains.local)
        self._accounts = Accounts(config.users.file)

    @hookimpl
    def mailgate_route(self, recipient: str) -> Route | None:
        domain = recipient.rpartition("@")[2]
        if domain in self._domains and self._accounts and self._accounts.exists(recipient):
            return LOCAL
        return None

    @hookimpl
    def mailgate_verify(self, address: str) -> bool | None:
        if address.rpartition("@")[2] not in self._domains or self._accounts is None:
            return None
        return self._accounts.exists(address)
