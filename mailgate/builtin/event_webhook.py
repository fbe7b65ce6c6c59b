"""Built-in plugin: `[[event_webhook]]`, delivery events spooled to disk and POSTed, signed, to an HTTP endpoint.

`mailgate_event` only hands the event to the disk thread and returns: a
slow or dead receiver never delays mail. Each event webhook has its own
spool under `<state_dir>/events/<name>/` (see event_spool) and its own
sender (see event_sender), which POSTs one event per request, a few at a
time, with `webhook-id` the event's id on every retry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import HTTPConnectionPool

from mailgate import hookimpl
from mailgate.builtin.event_sender import MAX_IN_FLIGHT, MAX_IN_MEMORY, EventSender
from mailgate.builtin.event_spool import EventSpool
from mailgate.builtin.http_post import pooled_client, reactor_or_global
from mailgate.config import EventWebhookConfig, GatewayConfig
from mailgate.core.meters import NO_METERS, Meters
from mailgate.outbound.retry import RetryPolicy

SPOOL_DIRECTORY = "events"  # under server.state_dir


class EventWebhooks:
    """The `[[event_webhook]]` tables: one EventSender each, started once the reactor runs.

    `reactor`, `http` (anything with treq's `post`), `run_blocking` (how a
    blocking disk call is run; default: the reactor's thread pool) and
    `max_in_memory` (event ids held per webhook) are for tests; `meters`
    counts the requests.

    One object for the whole process (`process_wide`): on a reload it is
    configured again, its spools stay open, and senders are added or
    closed as the new `[[event_webhook]]` tables say.
    """

    process_wide = True

    def __init__(self, reactor: Any = None, http: Any = None,
                 run_blocking: Callable[..., Deferred] | None = None, max_in_memory: int = MAX_IN_MEMORY,
                 meters: Meters = NO_METERS) -> None:
        self._meters = meters
        self._reactor = reactor
        self._http = http
        self._run_blocking = run_blocking
        self._max_in_memory = max_in_memory
        self._pool: HTTPConnectionPool | None = None
        self._shutdown_trigger: Any = None
        self._config: GatewayConfig | None = None
        self._started = False
        self.senders: dict[str, EventSender] = {}

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        """Runs before twistd changes to --rundir and drops privileges: the spools are opened at start."""
        self._config = config
        if not config.event_webhook:
            return self._apply(config)
        self._reactor = reactor_or_global(self._reactor)
        if self._http is None:
            self._http, self._pool = pooled_client(self._reactor, MAX_IN_FLIGHT)
            self._shutdown_trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        if self._started:
            self._apply(config)  # configured again (reload): the spools are open already
        elif hasattr(self._reactor, "callWhenRunning"):
            self._reactor.callWhenRunning(self.start)

    def start(self) -> None:
        """Open every spool and resume what it holds; at once if the reactor runs, or on the first event."""
        if self._started or self._config is None:
            return
        self._started = True
        self._apply(self._config)

    def _apply(self, config: GatewayConfig) -> None:
        wanted = {webhook.name: webhook for webhook in config.event_webhook}
        for name in [name for name in self.senders if name not in wanted]:
            self.senders.pop(name).close()  # its spool stays, for when it is configured again
        policy = RetryPolicy.from_config(config.relay)
        for name, webhook in wanted.items():
            if name in self.senders:
                self.senders[name].webhook, self.senders[name].policy = webhook, policy
                continue
            if not self._started:
                continue
            self.senders[name] = sender = self._sender(config, webhook, policy)
            sender.start()

    def _sender(self, config: GatewayConfig, webhook: EventWebhookConfig, policy: RetryPolicy) -> EventSender:
        # Relative to --rundir: we run after twistd changed to it.
        directory = os.path.join(os.path.abspath(config.server.state_dir), SPOOL_DIRECTORY, webhook.name)
        spool = EventSpool(directory, self._run_blocking or self._in_thread_pool)
        return EventSender(webhook, spool, self._http, self._reactor, policy, self._max_in_memory, self._meters)

    def _in_thread_pool(self, function: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), function, *args)

    @hookimpl
    def mailgate_event(self, event: dict[str, Any]) -> None:
        """Spool the event for every event webhook that wants its type; returns before anything is written."""
        if self._config is None or not self._config.event_webhook:
            return
        self.start()
        kind = event.get("type")
        senders = [sender for sender in self.senders.values() if kind in sender.webhook.events]
        if not senders:
            return
        # default=str: a value JSON has no type for (a Reply, a Route) is sent as its text.
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8", "replace")
        now = self._reactor.seconds()
        for sender in senders:
            sender.accept(body, now)
        return

    def close(self) -> Deferred:
        """Stop sending and drop idle connections; fires once events being spooled are on disk."""
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        return self._shutdown()

    def _shutdown(self) -> Deferred:
        self._shutdown_trigger = None
        waits = [sender.close() for sender in self.senders.values()]
        if self._pool is not None:
            waits.append(self._pool.closeCachedConnections())
        return DeferredList(waits)
