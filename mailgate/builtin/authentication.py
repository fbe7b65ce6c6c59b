"""Built-in plugin: `[authentication]`, SPF, DKIM and DMARC checked for mail from unauthenticated clients.

At the end of DATA, for a client that did not authenticate (AUTH) and is
not in `relay.allowed_networks`, the checks run (mailgate.mailauth.checks: every lookup through
`relay.nameservers`, each within `authentication.dns_timeout`) and their
results are added at the top as one Authentication-Results field naming
our authserv-id. An Authentication-Results field that arrived with any
message and claims our authserv-id is forged (or a loop's): it is removed
first, whoever the client, so a reader (a filter, a plugin, the webhook
JSON) only ever finds ours; the message is copied only when there is one.
With `dmarc = "enforce"`, a DMARC failure under `p=reject` is refused
with 550 5.7.1; under `p=quarantine` it is delivered, the field saying so.

Clients in `relay.allowed_networks` are the server's own senders, like
authenticated ones: their mail is signed (`[dkim]`), not checked, as
OpenDMARC's IgnoreHosts and rspamd's local networks do. Checking it would
test our own users' mail against the SPF of the domains they send as
(which names this server's outside address, not theirs), and under
`enforce` refuse it before it is signed.

The checks need a reactor that can send DNS queries: under a test clock
(mailgate.testing) they are off, with a log line.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorUDP
from twisted.logger import Logger

from mailgate import MessageChange, hookimpl
from mailgate.builtin.threads import in_threads
from mailgate.config import GatewayConfig
from mailgate.core.reply import Reply
from mailgate.core.session import Envelope, Session
from mailgate.mailauth.checks import Checker
from mailgate.mailauth.dmarc import OrganizationalDomains
from mailgate.mailauth.headers import header_end, without_fields
from mailgate.mailauth.results import HEADER, claims, our_authserv_id
from mailgate.net.dns import CachingResolver, Lookups, make_resolver

log = Logger()

TIME_LIMIT_SHARE = 0.8  # of plugins.timeout: the checks end (temperror) before the plugin would fail
MAX_TIME_LIMIT_SECONDS = 20.0  # RFC 7208 4.6.4: at least 20 s for SPF as a whole
_NAME = HEADER.lower().encode("ascii")


class AuthenticationChecks:
    def __init__(self) -> None:
        self._checker: Checker | None = None
        self._authserv_id = ""
        self._enforce = False

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig, reactor: Any) -> None:
        settings = config.authentication
        self._authserv_id = our_authserv_id(config)
        self._enforce = settings.dmarc == "enforce"
        self._checker = None
        if not settings.checks:
            return
        if not IReactorUDP.providedBy(reactor):
            log.info("authentication: no network on this reactor (a test clock): checks off")
            return
        timeout = settings.dns_timeout_seconds
        resolver = CachingResolver(make_resolver(config.relay.nameservers, reactor, timeouts=(timeout,)), reactor)
        limit = min(MAX_TIME_LIMIT_SECONDS, TIME_LIMIT_SHARE * config.plugins.timeout_seconds)
        self._checker = Checker(Lookups(resolver, timeout, reactor), settings.checks, OrganizationalDomains(),
                                in_threads(reactor), limit)

    @hookimpl
    def mailgate_message(self, session: Session, envelope: Envelope, message: bytes) -> Any:
        cleaned = self._without_ours(message)
        if self._checker is None or envelope.may_relay:  # authenticated, or in relay.allowed_networks
            return MessageChange(message=cleaned) if cleaned is not None else None
        return Deferred.fromCoroutine(self._check(self._checker, envelope, message if cleaned is None else cleaned,
                                                  cleaned is not None))

    def _without_ours(self, message: bytes) -> bytes | None:
        """The message without Authentication-Results fields claiming our authserv-id; None if it has none."""
        if _NAME not in message[:header_end(message)].lower():
            return None
        return without_fields(message, lambda field: field.name == "authentication-results"
                              and claims(field.value, self._authserv_id))

    async def _check(self, checker: Checker, envelope: Envelope, message: bytes,
                     cleaned: bool) -> MessageChange | Reply:
        session = envelope.session
        results = await checker.check(session.peer, envelope.mail_from, session.helo, message)
        dmarc = results.dmarc
        if self._enforce and dmarc is not None and dmarc.result == "fail" and dmarc.policy == "reject":
            log.info("authentication: message from {client} <{sender}> refused: DMARC policy of {domain}",
                     client=session.peer, sender=envelope.mail_from, domain=dmarc.from_domain)
            return Reply(550, "5.7.1", f"Message refused by the DMARC policy of {dmarc.from_domain}")
        return MessageChange(headers=[(HEADER, results.header_value(self._authserv_id))],
                             message=message if cleaned else None)
