"""The operator's side of the running gateway: the metrics endpoint's listener, its queue figures, the status view.

The HTTP listener is bound with the mail listeners (before twistd drops
privileges), and a port in use stops start-up the same way. The queue's
figures are copied for the metrics once a second on the reactor thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from mailgate.app.listening import StartupListener
from mailgate.app.periodic import Periodic
from mailgate.ops.recent import RecentEvents
from mailgate.ops.status_page import ListenerView, StatusView, render
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
    """Copies the queue's figures for the metrics, once a second."""
    metrics = gateway.ops.metrics
    if metrics is None:
        return None
    return Periodic("metrics: queue figures", lambda: metrics.queue.refresh(queue_index(gateway)),
                    gateway.reactor, QUEUE_FIGURES_SECONDS)


def queue_index(gateway: GatewayService) -> QueueIndex:
    return gateway.pipeline.spooler.index if gateway.pipeline is not None else QueueIndex()


def status_page(gateway: GatewayService) -> str:
    recent = gateway.ops.recent if gateway.ops.recent is not None else RecentEvents(gateway.reactor.seconds)
    return render(status_view(gateway), queue_index(gateway), recent, now=gateway.reactor.seconds())


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
