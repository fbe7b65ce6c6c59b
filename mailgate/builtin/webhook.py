"""Built-in plugin: `[[webhook]]`, mail for matching addresses POSTed to an HTTP endpoint."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from mailgate import __version__, hookimpl
from mailgate.config import GatewayConfig, WebhookConfig
from mailgate.core.meters import NO_METERS, Meters
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.core.errors import DeliveryError, PermanentFailure, TemporaryFailure
from mailgate.outbound.capacity import MAX_CONCURRENT_ATTEMPTS
from mailgate.builtin.http_post import Answer, exchange, pooled_client, reactor_or_global, within
from mailgate.builtin.webhook_payload import delivery_id, json_body, signature_headers
from mailgate.mailauth.results import our_authserv_id

log = Logger()

SCHEME = "webhook"
# As many kept-alive connections as the queue runs attempts: with fewer, every
# attempt past the pool's size opened and closed a connection of its own.
MAX_PERSISTENT_PER_HOST = MAX_CONCURRENT_ATTEMPTS
BUILD_IN_THREAD_BYTES = 256_000  # parsing a big message would stall every session meanwhile


class WebhookGateway:
    """Routes matching recipients to `webhook:NAME` and delivers them by HTTP POST.

    `queued` webhooks are delivered by the outbound queue (`mailgate_deliver`),
    with its retries and bounces; `sync` ones while the client waits at the
    end of DATA (`mailgate_deliver_inline`), the HTTP answer becoming the
    SMTP reply. `reactor` and `http` (anything with treq's `post`, such as
    `treq.testing.StubTreq`) are for tests; by default the global reactor
    and a pooled treq client are used; `meters` counts the requests.
    """

    def __init__(self, reactor: Any = None, http: Any = None, meters: Meters = NO_METERS) -> None:
        self._meters = meters
        self._reactor = reactor
        self._http = http
        self._pool: HTTPConnectionPool | None = None
        self._webhooks: dict[str, WebhookConfig] = {}
        self._authserv_id: str | None = None  # whose Authentication-Results the JSON reads; None: checks off

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._webhooks = {webhook.name: webhook for webhook in config.webhook}
        self._authserv_id = our_authserv_id(config) if config.authentication.checks else None
        if not self._webhooks:
            return
        self._reactor = reactor_or_global(self._reactor)
        if self._http is None:
            self._http, self._pool = pooled_client(self._reactor, MAX_PERSISTENT_PER_HOST)
            self._reactor.addSystemEventTrigger("before", "shutdown", self.close)

    def close(self) -> Deferred | None:
        """Drop idle pooled connections (at shutdown, and for tests)."""
        return self._pool.closeCachedConnections() if self._pool is not None else None

    # --- routing ---------------------------------------------------------

    def _match(self, address: str) -> WebhookConfig | None:
        address = address.lower()
        wildcard = "*@" + address.rpartition("@")[2]
        for webhook in self._webhooks.values():
            if address in webhook.match or wildcard in webhook.match:
                return webhook
        return None

    @hookimpl
    def mailgate_route(self, recipient: str) -> Route | None:
        webhook = self._match(recipient)
        return Route(f"{SCHEME}:{webhook.name}") if webhook is not None else None

    @hookimpl
    def mailgate_verify(self, address: str) -> bool | None:
        return True if self._match(address) is not None else None

    # --- delivery --------------------------------------------------------

    def _webhook_for(self, route: str) -> WebhookConfig | None:
        """The webhook a `webhook:NAME` route names; None for other schemes."""
        parsed = Route(route)
        if parsed.scheme != SCHEME:
            return None
        name = parsed.argument
        webhook = self._webhooks.get(name)
        if webhook is None:  # renamed or removed while mail for it waited in the queue
            raise PermanentFailure(
                "No such webhook", code=550, enhanced="5.3.5", reason=f"route {route}: no [[webhook]] named {name!r}"
            )
        return webhook

    @hookimpl
    async def mailgate_deliver(self, route: str, envelope: Envelope, message: bytes) -> bool | None:
        """Queued mode. A `sync` webhook's routes never reach the queue, except
        mail queued before its mode was changed: that is delivered too."""
        webhook = self._webhook_for(route)
        if webhook is None:
            return None
        return await self._post(webhook, route, envelope, message)

    @hookimpl
    async def mailgate_deliver_inline(self, route: str, envelope: Envelope, message: bytes) -> bool | None:
        """Sync mode. An unknown name is left to the queue, which bounces that
        recipient alone rather than refusing the whole transaction."""
        parsed = Route(route)
        webhook = self._webhooks.get(parsed.argument) if parsed.scheme == SCHEME else None
        if webhook is None or webhook.mode != "sync":
            return None
        return await self._post(webhook, route, envelope, message)

    async def _post(self, webhook: WebhookConfig, route: str, envelope: Envelope, message: bytes) -> bool:
        """One POST; True on 2xx, else the DeliveryError its status means.

    Replies name the HTTP status (it reaches the sender, in a bounce or at
    DATA) but not the webhook or its URL, which only the log is told.
    """
        delivery = delivery_id(message, route, envelope.rcpt_to)
        if webhook.format == "raw":
            body, content_type = message, "message/rfc822"
        else:
            body, content_type = await self._json_body(message, envelope, delivery), "application/json"
        headers = {
            "Content-Type": content_type,
            "User-Agent": f"mailgate/{__version__}",
            **signature_headers(delivery, int(self._reactor.seconds()), body, webhook.secrets),
        }
        posted = Deferred.fromCoroutine(exchange(self._http, webhook.url, headers, body))
        try:
            answer = await within(posted, webhook.timeout_seconds, self._reactor)
        except Exception as exc:  # timeout, refused, reset, DNS: the receiver may be back later
            self._meters.webhook_answered(webhook.name, "error")
            error = _temporary(webhook, "unreachable", f"{delivery}: {type(exc).__name__}: {exc}")
            log.info("{reason}", reason=error.reason)  # the queue logs only counts
            raise error from None
        self._meters.webhook_answered(webhook.name, str(answer.status))
        try:
            return _verdict(webhook, delivery, answer)
        except DeliveryError as error:
            log.info("{reason}", reason=error.reason)
            raise

    async def _json_body(self, message: bytes, envelope: Envelope, delivery: str) -> bytes:
        pool = getattr(self._reactor, "getThreadPool", None)
        if len(message) < BUILD_IN_THREAD_BYTES or pool is None:
            return json_body(message, envelope, delivery, self._authserv_id)
        return await deferToThreadPool(self._reactor, pool(), json_body, message, envelope, delivery,
                                       self._authserv_id)


def _verdict(webhook: WebhookConfig, delivery: str, answer: Answer) -> bool:
    """2xx delivered; 408, 429, 5xx (and anything odd, like 3xx) later; other 4xx never."""
    if answer.ok:
        log.info("webhook {name}: {id} delivered ({answer})", name=webhook.name, id=delivery, answer=answer)
        return True
    if answer.refused_for_good:
        raise PermanentFailure(
            f"Webhook refused the message ({answer})",
            code=550, enhanced="5.7.1", reason=f"webhook {webhook.name}: {delivery} refused: {answer}",
        )
    raise _temporary(webhook, f"unavailable ({answer})", f"{delivery} answered {answer}")


def _temporary(webhook: WebhookConfig, what: str, detail: str) -> TemporaryFailure:
    return TemporaryFailure(
        f"Webhook {what}, try again later",
        code=451, enhanced="4.4.1", reason=f"webhook {webhook.name}: {detail}",
    )
