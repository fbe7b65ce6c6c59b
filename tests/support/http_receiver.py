"""A real HTTP endpoint on 127.0.0.1 (twisted.web, port 0) that answers from a script and records every request.

For trial TestCases, whose reactor it runs in: `listen(testcase, receiver)`
binds it and registers the cleanup that drops its port and connections, so
nothing is left on the reactor.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class Receiver(Resource):
    """Answers POSTs with the next of `codes` (the last repeats), or never while `hang` is set.

    Each request is recorded as a dict of `path`, `headers` (lower-case
    names), `body` and `at` (monotonic seconds). `open` counts the requests
    not answered yet, `most_open` the most there were at once.
    """

    isLeaf = True

    def __init__(self, codes: list[int] | None = None, hang: bool = False, answer: bytes = b"ok\n") -> None:
        super().__init__()
        self.codes = list(codes or [200])
        self.hang = hang
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.open = self.most_open = 0

    def render_POST(self, request: Any) -> Any:
        self.requests.append({
            "path": request.path.decode(),
            "headers": {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
            "at": time.monotonic(),
        })
        if self.hang:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            request.notifyFinish().addBoth(self._closed)
            return NOT_DONE_YET
        request.setResponseCode(self.codes.pop(0) if len(self.codes) > 1 else self.codes[0])
        return self.answer

    def _closed(self, _: Any) -> None:
        self.open -= 1


class TrackingSite(Site):
    """A Site that can drop its open connections, so nothing is left on the reactor."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.append(channel)
        return channel


def listen(testcase: Any, receiver: Resource, port: int = 0, path: str = "/events") -> str:
    """Serve `receiver` on 127.0.0.1 until the test ends; its URL, ending in `path`."""
    site = TrackingSite(receiver)
    listening = reactor.listenTCP(port, site, interface="127.0.0.1")

    async def close() -> None:
        await listening.stopListening()
        for channel in site.channels:
            if getattr(channel, "transport", None) is not None:
                channel.transport.abortConnection()
        await deferLater(reactor, 0, lambda: None)  # let the aborts be processed

    testcase.addCleanup(lambda: Deferred.fromCoroutine(close()))
    return f"http://127.0.0.1:{listening.getHost().port}{path}"
