"""Built-in plugin: `[srs]`, forwarded mail leaves with an SRS sender, and mail to SRS addresses finds its way back.

Forward side (`mailgate_forward_sender`): a recipient reached through a
forward (a `[[forward]]` rule; list copies already leave with the list's
own bounce address) whose route relays by SMTP (`mx`, `smtp:`) gets the
sender `SRS0=...@<srs.domain>` (`SRS1=` when the sender is another
forwarder's SRS address); the delivery transaction queues those
recipients apart, under that sender. Gateways (`webhook:`, `pipe:`) keep
the original sender: no SPF check meets them.

Way back: a valid SRS address at `srs.domain` is a forward to the address
inside it (`mailgate_forward`), so a bounce or a reply is routed as mail
to the original sender would be (its mailbox here, or `mx`), by the same
code. An SRS-looking address there that is forged, damaged or over 21
days old is refused with 550 5.1.1 (`mailgate_route`, asked before the
other built-ins).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from mailgate import hookimpl
from mailgate.config import GatewayConfig
from mailgate.core.route import Route
from mailgate.mailauth.srs import NotOurs, SenderRewriting

log = Logger()

REFUSED = Route("reject:550 5.1.1 Recipient address rejected: not a valid SRS address")
RELAYED_SCHEMES = frozenset({"mx", "smtp"})


class SRS:
    def __init__(self) -> None:
        self._rewriting: SenderRewriting | None = None

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig, reactor: Any) -> None:
        settings = config.srs
        if not settings.secret:
            self._rewriting = None
            return
        self._rewriting = SenderRewriting(settings.secret, settings.domain or config.server.hostname,
                                          reactor.seconds)

    @hookimpl
    def mailgate_forward_sender(self, sender: str, recipient: str, route: str) -> str | None:
        if self._rewriting is None or Route(route).scheme not in RELAYED_SCHEMES:
            return None
        rewritten = self._rewriting.forward(sender)
        if rewritten is None and sender and not self._rewriting.is_srs(sender):
            log.warn("srs: <{sender}> kept for {rcpt}: rewritten, its local part would pass 64 octets",
                     sender=sender, rcpt=recipient)
        return rewritten

    @hookimpl
    def mailgate_forward(self, recipient: str) -> list[str] | None:
        if self._rewriting is None or not self._rewriting.is_srs(recipient):
            return None
        try:
            return [self._rewriting.reverse(recipient)]
        except NotOurs as error:
            log.info("srs: {rcpt} refused: {error}", rcpt=recipient, error=error)
            return None  # mailgate_route refuses it

    @hookimpl
    def mailgate_route(self, recipient: str) -> Route | None:
        if self._rewriting is not None and self._rewriting.is_srs(recipient):
            return REFUSED
        return None
