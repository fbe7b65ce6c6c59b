"""Address queries (RFC 5321 3.5): VRFY, EXPN, answered as security.vrfy / security.expn allow."""

from __future__ import annotations

from typing import Any

from mailgate.core.addresses import AddressError, normalize_mailbox
from mailgate.core.reply import Reply
from mailgate.hooks.calling import first_answer
from mailgate.inbound.routing import expand_list


class SMTPVerifyCommands:
    """VRFY and EXPN, mixed into the SMTP session."""

    def smtp_VRFY(self: Any, argument: str) -> Any:
        if not self._policy_allows(self.factory.config.security.vrfy):
            return self._send(252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
        address = self._query_address(argument)
        if address is None:
            return self._send(501, "5.5.4 Syntax: VRFY address")
        return self._verify(address)

    async def _verify(self: Any, address: str) -> Any:
        known = await first_answer(self.factory.hooks.mailgate_verify, address=address)
        if known is None:
            return self._reply(252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
        if known:
            return self._reply(250, f"2.1.5 <{address}>")
        return self._reply(550, "5.1.1 User unknown")

    def smtp_EXPN(self: Any, argument: str) -> Any:
        policy = self.factory.config.security.expn
        if policy == "off":
            return self._send(502, "5.5.1 EXPN not available")
        if not self._policy_allows(policy):
            return self._send(550, "5.7.1 EXPN not allowed")
        address = self._query_address(argument)
        if address is None:
            return self._send(501, "5.5.4 Syntax: EXPN list")
        return self._expand(address)

    async def _expand(self: Any, address: str) -> Any:
        members = await expand_list(self.factory.hooks, address)
        if not members:
            return self._reply(550, "5.1.1 Not a mailing list")
        return Reply(250, "2.1.5", "\n".join(f"<{member}>" for member in members))

    def _policy_allows(self: Any, policy: str) -> bool:
        """security.vrfy / security.expn: off | authenticated | all."""
        return policy == "all" or (policy == "authenticated" and self._authenticated_as is not None)

    @staticmethod
    def _query_address(argument: str) -> str | None:
        try:
            return normalize_mailbox(argument.strip().removeprefix("<").removesuffix(">"))
        except AddressError:
            return None
