"""HTTP POSTs for the built-ins: a pooled treq client, one request-and-answer, and a timeout that does not wait.

Shared by `[[webhook]]`, `[[event_webhook]]` and `[rspamd]`, so that all
three treat a stale pooled connection, their own timeout and the receiver's
status the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)

IDLE_CONNECTION_SECONDS = 60
RETRIED_STATUSES = frozenset({408, 429})  # client errors that mean "later", not "never"
# A pooled connection the receiver closed just as it was reused: POST is not
# retried by the Agent (not idempotent); receivers dedupe on webhook-id, so we can.
_STALE_CONNECTION = (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


class AnswerTooLarge(Exception):
    """The response body was longer than the caller would read."""


@dataclass(frozen=True)
class Answer:
    """An HTTP response: its status, its reason phrase (printable, short) and, if asked for, its body."""

    status: int
    phrase: str
    body: bytes = b""

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.phrase}".strip()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def refused_for_good(self) -> bool:
        """A 4xx other than 408 and 429: sending the same request again is pointless."""
        return 400 <= self.status < 500 and self.status not in RETRIED_STATUSES


def reactor_or_global(reactor: Any) -> Any:
    """`reactor`, or when it is None the global one, imported only then: at configure time, never at import."""
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as installed

    return installed


def pooled_client(reactor: Any, max_per_host: int) -> tuple[HTTPClient, HTTPConnectionPool]:
    """A treq client over a pool keeping up to `max_per_host` connections alive per host."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool.cachedConnectionTimeout = IDLE_CONNECTION_SECONDS
    return HTTPClient(Agent(reactor, pool=pool)), pool


def printable(text: str, limit: int) -> str:
    """`text` on one line of printable ASCII, at most `limit` characters."""
    return _UNPRINTABLE.sub(" ", text).strip()[:limit]


async def exchange(http: Any, url: str, headers: Any, body: bytes, read_bytes: int = 0) -> Answer:
    """POST `body`; the answer, with up to `read_bytes` of its body (more: AnswerTooLarge).

    The body is read to the end either way, so the connection goes back to
    the pool. `http` is anything with treq's `post` (treq.testing.StubTreq).
    """
    try:
        response = await http.post(url, data=body, headers=headers, allow_redirects=False)
    except _STALE_CONNECTION as exc:
        if _cancelled(exc):
            raise  # our own timeout: a second POST now would reach a slow receiver twice
        response = await http.post(url, data=body, headers=headers, allow_redirects=False)
    chunks: list[bytes] = []
    size = 0

    def keep(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size <= read_bytes:
            chunks.append(chunk)

    await treq.collect(response, keep)
    if read_bytes and size > read_bytes:
        raise AnswerTooLarge(f"answer of over {read_bytes} bytes")
    phrase = response.phrase.decode("latin-1") if isinstance(response.phrase, bytes) else str(response.phrase)
    return Answer(response.code, printable(phrase, 80), b"".join(chunks))


def _cancelled(exc: Exception) -> bool:
    """Twisted reports a cancelled request as ResponseNeverReceived([CancelledError])."""
    return any(reason.check(CancelledError) for reason in getattr(exc, "reasons", ()))


def within(work: Deferred, seconds: float, clock: Any) -> Deferred:
    """`work`'s result, or TimeoutError after `seconds`; `work` is then cancelled.

    Unlike Deferred.addTimeout, the answer does not wait for the cancellation
    to finish: an SMTP client waiting at DATA hears its reply on time regardless.
    Cancelling `work` itself (at shutdown) settles the answer at once too.
    """
    outcome: Deferred = Deferred()

    def expire() -> None:
        outcome.errback(TimeoutError(f"no answer within {seconds:g}s"))
        work.cancel()

    timer = clock.callLater(seconds, expire)

    def settle(result: Any) -> None:
        if not timer.active():
            return  # expired: the late result (the cancellation) is dropped
        timer.cancel()
        if isinstance(result, Failure):
            outcome.errback(result)
        else:
            outcome.callback(result)

    work.addBoth(settle)
    return outcome
