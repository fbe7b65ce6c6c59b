"""The Prometheus metrics: counters from delivery events and counting points, gauges from the queue in memory.

Every metric lives in one CollectorRegistry per gateway (not the client's
global one), with the client's process and platform collectors. Delivery
outcomes are counted from `mailgate_event` (count_event); sessions, logins
and webhook requests by the code that sees them (the Meters methods); the
queue gauges from the QueueIndex, copied on the reactor thread once a second
(refresh) because prometheus-client's Twisted resource collects in a thread
and must never walk structures the reactor is changing.

With `server.workers > 1` the master starts every worker with
PROMETHEUS_MULTIPROC_DIR set (SHARED_DIRECTORY): prometheus-client then
keeps each process's counters and histograms in a file of that directory,
and the registry served (by worker 0, which has the queue) sums them all
(MultiProcessCollector) instead of listing its own, beside its queue
gauges, its process metrics and the master's count of worker restarts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from mailgate.ops.queue_view import QueueView

SESSION_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
DELAY_SECONDS = (0.01, 0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)
RESULTS = {"delivered": "delivered", "deferred": "deferred", "bounced": "bounced", "expired": "bounced"}
SHARED_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable: read when it is imported


class Metrics:
    """The gateway's metrics; implements mailgate.core.meters.Meters."""

    def __init__(self, destinations: int = 10, shared: str | None = None) -> None:
        """`shared`: the directory every process's counters are kept in (see the module docstring);
        by default PROMETHEUS_MULTIPROC_DIR, if set."""
        shared = shared if shared is not None else os.environ.get(SHARED_DIRECTORY)
        self.registry = served = CollectorRegistry()  # what /metrics shows
        registry = served if not shared else CollectorRegistry()  # where this process's counters are listed
        if shared:
            MultiProcessCollector(served, path=shared)
            self.worker_restarts: WorkerRestarts | None = WorkerRestarts()
            served.register(self.worker_restarts)
        else:
            self.worker_restarts = None
        ProcessCollector(registry=served)
        PlatformCollector(registry=served)
        GCCollector(registry=served)
        self.queue = QueueGauges(destinations)
        served.register(self.queue)
        self.smtp_sessions = Counter("mailgate_smtp_sessions", "SMTP connections accepted", ["listener"],
                                     registry=registry)
        self.smtp_session_seconds = Histogram("mailgate_smtp_session_duration_seconds",
                                              "How long SMTP connections lasted", ["listener"],
                                              buckets=SESSION_SECONDS, registry=registry)
        self.pop3_sessions = Counter("mailgate_pop3_sessions", "POP3 connections accepted", registry=registry)
        self.received = Counter("mailgate_messages_received", "Messages accepted at the end of DATA", ["listener"],
                                registry=registry)
        self.refused = Counter("mailgate_recipients_refused", "Recipients refused, at RCPT or with their message",
                               ["code"], registry=registry)
        self.deliveries = Counter("mailgate_deliveries", "Delivery outcomes per recipient (expired counts as "
                                  "bounced)", ["scheme", "result"], registry=registry)
        self.delivery_delay = Histogram("mailgate_delivery_delay_seconds", "From arrival to delivery, per recipient",
                                        ["scheme"], buckets=DELAY_SECONDS, registry=registry)
        self.auth_failures = Counter("mailgate_auth_failures", "Logins refused", ["protocol"], registry=registry)
        self.webhook_requests = Counter("mailgate_webhook_requests", "Webhook POSTs by HTTP status (\"error\": "
                                        "no answer)", ["name", "status"], registry=registry)
        self.reloads = Counter("mailgate_config_reloads", "Configuration reloads (SIGHUP)", ["result"],
                               registry=registry)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._last_received = ""

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: labels() costs a lock and a tuple each time."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- mailgate.core.meters.Meters ---------------------------------------

    def session_opened(self, protocol: str, listener: str) -> None:
        if protocol == "pop3":
            self.pop3_sessions.inc()
        else:
            self._child(self.smtp_sessions, listener).inc()

    def session_closed(self, protocol: str, listener: str, seconds: float) -> None:
        if protocol != "pop3":
            self._child(self.smtp_session_seconds, listener).observe(seconds)

    def auth_failed(self, protocol: str) -> None:
        self._child(self.auth_failures, protocol).inc()

    def webhook_answered(self, name: str, status: str) -> None:
        self._child(self.webhook_requests, name, status).inc()

    # --- delivery events ---------------------------------------------------

    def count_event(self, event: dict[str, Any]) -> None:
        """One mailgate_event: messages received, recipients refused, delivery outcomes and delays."""
        kind = event.get("type")
        if kind == "received":
            queue_id = event.get("queue_id", "")
            if queue_id != self._last_received:  # a message's received events come together, one per recipient
                self._last_received = queue_id
                self._child(self.received, str(event.get("listener", ""))).inc()
            return
        if kind == "refused":
            if event.get("recipient"):
                self._child(self.refused, str(event.get("reply", ""))[:3]).inc()
            return
        result = RESULTS.get(str(kind))
        if result is None:
            return
        scheme = str(event.get("route", "")).partition(":")[0]
        self._child(self.deliveries, scheme, result).inc()
        delay = event.get("delay")
        if kind == "delivered" and isinstance(delay, (int, float)):
            self._child(self.delivery_delay, scheme).observe(delay)


class QueueGauges:
    """`mailgate_queue_*`: a copy of the QueueIndex's figures, made on the reactor thread, read by scrapes."""

    def __init__(self, destinations: int, wall_clock: Callable[[], float] = time.time) -> None:
        self._top = destinations
        self._now = wall_clock
        self._figures: tuple[int, float | None, list[tuple[str, int]], int] = (0, None, [], 0)

    def refresh(self, index: QueueView) -> None:
        """Copy the figures (reactor thread): one assignment, so a scrape sees one copy or the next."""
        biggest, others = index.destination_counts(self._top)
        self._figures = (len(index), index.oldest_arrival(), biggest, others)

    def collect(self) -> Iterator[Metric]:
        count, oldest, biggest, others = self._figures
        yield GaugeMetricFamily("mailgate_queue_messages", "Messages in the outbound queue", value=count)
        age = max(0.0, self._now() - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily("mailgate_queue_oldest_seconds", "Age of the oldest queued message", value=age)
        by_destination = GaugeMetricFamily(
            "mailgate_queue_destination_messages",
            "Queued messages by destination (recipient domain or route); the smaller ones as \"other\"",
            labels=["destination"])
        for destination, messages in biggest:
            by_destination.add_metric([destination], messages)
        by_destination.add_metric(["other"], others)
        yield by_destination


class WorkerRestarts:
    """`mailgate_worker_restarts_total`: the master's count of workers it started again, as it last told."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("mailgate_worker_restarts", "Workers that died and were started again "
                                  "(server.workers > 1)", value=self.count)
