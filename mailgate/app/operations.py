"""The operator's side of the running gateway: the metrics endpoint's listener, its queue figures, the status view.

The HTTP listener is bound with the mail listeners (before twistd drops
privileges), and a port in use stops start-up the same way. The queue's
figures are copied for the metrics once a second on the reactor thread;
with workers, worker 0 shows every worker's part (mailgate.ops.queue_view).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from mailgate.app.listening import StartupListener
from mailgate.app.periodic import Periodic
from mailgate.ops.metrics import SHARED_DIRECTORY
from mailgate.ops.queue_view import MergedQueue, QueueView, Snapshot, read_snapshots, snapshot, write_snapshot
from mailgate.ops.recent import RecentEvents
from mailgate.ops.status_page import DESTINATIONS_SHOWN, MESSAGES_PER_DESTINATION, ListenerView, StatusView, render
from mailgate.ops.web import metrics_site
from mailgate.outbound.queue_index import QueueIndex

if TYPE_CHECKING:
    from mailgate.app.service import GatewayService  # which starts these

log = Logger()

QUEUE_FIGURES_SECONDS = 1.0


class MetricsListener(StartupListener):
    """`[metrics] endpoint`: bound before privileges drop; a failure to bind stops start-up."""

    def __init__(self, gateway: GatewayService, endpoint: Any, site: Any) -> None:
        super().__init__(endpoint, site, gateway, "metrics.endpoint", gateway.config.metrics.endpoint)

    def _bound(self, port: Any) -> Any:
        log.info("listening: metrics and status page (http) on {address}", address=port.getHost())
        return port


def metrics_listener(gateway: GatewayService) -> MetricsListener | None:
    """The HTTP listener for `/metrics` and `/`, or None when `metrics.endpoint` is empty."""
    metrics, endpoint = gateway.ops.metrics, gateway.config.metrics.endpoint
    if metrics is None or not endpoint:
        return None
    if gateway.role is not None:  # a worker: the master bound it, for worker 0
        server = gateway.role.metrics_endpoint()
        if server is None:
            return None
    else:
        try:
            server = serverFromString(gateway.reactor, endpoint)
        except (IndexError, KeyError):  # the config checked its form: only systemd's lookup is left
            gateway._fail_startup(f"metrics.endpoint: {endpoint}: no such socket was passed by systemd (LISTEN_FDS)")
    listener = MetricsListener(gateway, server, metrics_site(metrics.registry, lambda: status_page(gateway)))
    listener.setName("metrics")
    return listener


def queue_figures(gateway: GatewayService) -> Periodic | None:
    """Copies the queue's figures for the metrics once a second (with workers, QueueShares)."""
    metrics = gateway.ops.metrics
    if metrics is None:
        return None
    directory = os.environ.get(SHARED_DIRECTORY)
    if gateway.role is None or not directory:
        return Periodic("metrics: queue figures", lambda: metrics.queue.refresh(queue_index(gateway)),
                        gateway.reactor, QUEUE_FIGURES_SECONDS)
    shares = QueueShares(gateway, directory, gateway.role.setup.index, gateway.role.setup.workers)
    return Periodic("metrics: queue figures", shares.refresh, gateway.reactor, QUEUE_FIGURES_SECONDS)


class QueueShares:
    """With workers: each worker but 0 writes its part's snapshot, worker 0 merges the others' into its own."""

    def __init__(self, gateway: GatewayService, directory: str, index: int, workers: int) -> None:
        self._gateway, self._directory, self._index, self._workers = gateway, directory, index, workers

    def _path(self, index: int) -> str:
        return os.path.join(self._directory, f"queue-{index}.json")

    def refresh(self) -> Any:
        own = queue_index(self._gateway)
        if self._index != 0:
            figures = snapshot(own, max(DESTINATIONS_SHOWN, self._gateway.config.metrics.destinations),
                               MESSAGES_PER_DESTINATION)
            return self._gateway.run_blocking(write_snapshot, self._path(self._index), figures)
        others = self._gateway.run_blocking(read_snapshots, [self._path(i) for i in range(1, self._workers)])
        return others.addCallback(self._merge, own)

    def _merge(self, others: list[Snapshot], own: QueueIndex) -> None:
        merged = self._gateway.ops.queue_view = MergedQueue(own, others)
        metrics = self._gateway.ops.metrics
        if metrics is not None:
            metrics.queue.refresh(merged)


def queue_index(gateway: GatewayService) -> QueueIndex:
    """This process's own queue (its part of it, with workers)."""
    return gateway.pipeline.spooler.index if gateway.pipeline is not None else QueueIndex()


def status_page(gateway: GatewayService) -> str:
    recent = gateway.ops.recent if gateway.ops.recent is not None else RecentEvents(gateway.reactor.seconds)
    view: QueueView = gateway.ops.queue_view if gateway.ops.queue_view is not None else queue_index(gateway)
    return render(status_view(gateway), view, recent, now=gateway.reactor.seconds())


def status_view(gateway: GatewayService) -> StatusView:
    generation = gateway.generation
    listeners = []
    for listener in gateway.config.listen:
        port = gateway.ports.get(listener.name)
        address = _address(port.getHost()) if port is not None else None
        listeners.append(ListenerView(listener.name, listener.protocol, listener.endpoint, listener.tls, address))
    return StatusView(
        hostname=gateway.config.server.hostname, started=gateway.started,
        generation=generation.number if generation is not None else 0,
        reloaded=generation.started if generation is not None and generation.number > 1 else None,
        listeners=tuple(listeners),
    )


def _address(host: Any) -> str:
    """"127.0.0.1:2525", "[::1]:2525", or a UNIX socket's path."""
    ip, port = getattr(host, "host", None), getattr(host, "port", None)
    if ip is None:
        return str(getattr(host, "name", host))
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
