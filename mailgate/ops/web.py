"""The `[metrics] endpoint`'s HTTP server: `/metrics` for Prometheus, `/` the status page.

`/metrics` is prometheus-client's own Twisted resource (a WSGI app in the
reactor's thread pool, so collection runs in a thread: the gauges it reads
are copies, see mailgate.ops.metrics). `/` is rendered on the reactor
thread from the queue in memory. Requests are not logged: a scrape every
15 s would fill the log.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import Site


class StatusResource(Resource):
    """`/`: the page `render()` returns, never cached."""

    isLeaf = True

    def __init__(self, render: Callable[[], str]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        return self._render().encode("utf-8")


class QuietSite(Site):
    """A Site that logs neither its start nor each request."""

    noisy = False

    def log(self, request: Request) -> None:
        return None


def metrics_site(registry: CollectorRegistry, render_status: Callable[[], str]) -> Site:
    """The Site: `/` the status page, `/metrics` for `registry`; any other path is 404."""
    from prometheus_client.twisted import MetricsResource  # it imports the global reactor: only when serving

    root = Resource()
    root.putChild(b"", StatusResource(render_status))
    root.putChild(b"metrics", MetricsResource(registry))
    return QuietSite(root)
