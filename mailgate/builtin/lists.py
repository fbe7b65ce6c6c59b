"""Built-in plugin: `[lists.ADDRESS]` mailing lists, their posting policy and bounce address."""

from __future__ import annotations

from typing import Mapping

from mailgate import hookimpl
from mailgate.config import GatewayConfig, MailingList
from mailgate.core.lists import bounce_address
from mailgate.core.route import DISCARD, Route
from mailgate.core.session import Envelope

MAY_NOT_POST = Route("reject:550 5.7.1 You may not post to this list")


class MailingLists:
    """Routes a list address to `list:ADDRESS` (expanded at delivery), answers
    EXPN through `mailgate_expand`, and enforces who may post."""

    def __init__(self) -> None:
        self._lists: Mapping[str, MailingList] = {}
        self._bounces: dict[str, MailingList] = {}

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._lists = config.lists
        self._bounces = {bounce_address(a): mlist for a, mlist in config.lists.items()}

    @hookimpl
    def mailgate_route(self, recipient: str, envelope: Envelope) -> Route | None:
        mlist = self._lists.get(recipient)
        if mlist is None:
            return self._bounce_route(recipient)
        if not self._may_post(mlist, envelope):
            return MAY_NOT_POST
        return Route(f"list:{recipient}")

    def _bounce_route(self, recipient: str) -> Route | None:
        """Bounces of list copies are accepted and dropped: with no list owner
        configured there is nobody to read them, but refusing them would only
        make the remote server bounce the bounce."""
        return DISCARD if recipient in self._bounces else None

    @staticmethod
    def _may_post(mlist: MailingList, envelope: Envelope) -> bool:
        if mlist.post == "members":
            return envelope.mail_from in mlist.members or envelope.authenticated_as in mlist.members
        if mlist.post == "authenticated":
            return envelope.authenticated_as is not None
        return True

    @hookimpl
    def mailgate_expand(self, address: str) -> list[str] | None:
        mlist = self._lists.get(address)
        return list(mlist.members) if mlist is not None else None

    @hookimpl
    def mailgate_verify(self, address: str) -> bool | None:
        return True if address in self._lists else None
