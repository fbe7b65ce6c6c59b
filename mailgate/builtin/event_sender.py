"""Sending one event webhook's spool: a few POSTs at a time, retries, and a bounded view of the disk in memory.

The spool on disk is the truth; memory holds at most `max_in_memory` event
ids (those due soonest, and those in flight), never a body. An event that
does not fit stays on disk only, and the sender notes that the directory
holds more than it knows. When what it holds falls to half, it lists the
directory once and takes the earliest due. So a receiver that is down for
days costs a fixed amount of memory, and an event is never read from disk
but to be sent.
"""

from __future__ import annotations

import bisect
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgate import __version__
from mailgate.builtin.event_spool import EventSpool, Listing, new_event_id, spooled_at
from mailgate.core.meters import NO_METERS, Meters
from mailgate.builtin.http_post import Answer, exchange, within
from mailgate.builtin.webhook_payload import signature_headers
from mailgate.config import EventWebhookConfig
from mailgate.outbound.retry import RetryPolicy

log = Logger()

MAX_IN_FLIGHT = 4  # POSTs at once, per event webhook
MAX_IN_MEMORY = 1000  # event ids held, per event webhook
LIST_RETRY_SECONDS = 60.0  # after a failed directory listing


def attempts_by_age(policy: RetryPolicy, age_seconds: float) -> int:
    """The attempts an event of this age has had, had each been made on time.

    Retries follow relay.retry_intervals counted from when the event was
    spooled, so the schedule survives a restart with no count kept on disk.
    """
    attempts, elapsed = 1, 0.0
    for interval in policy.intervals_seconds[:-1]:
        elapsed += interval
        if age_seconds < elapsed:
            break
        attempts += 1
    return attempts


class EventSender:
    """POSTs the events of one `[[event_webhook]]` from its EventSpool, retrying on the queue's schedule."""

    def __init__(self, webhook: EventWebhookConfig, spool: EventSpool, http: Any, clock: Any,
                 policy: RetryPolicy, max_in_memory: int = MAX_IN_MEMORY, meters: Meters = NO_METERS) -> None:
        self.webhook = webhook
        self._meters = meters
        self.policy = policy
        self._spool = spool
        self._http = http
        self._clock = clock
        self._max_in_memory = max_in_memory
        self._due: list[tuple[float, str]] = []  # (due time, id), soonest first
        self._known: set[str] = set()  # ids due, in flight, or being removed
        self._in_flight: set[str] = set()
        self._posts: dict[str, Deferred] = {}  # id -> its POST, to cancel at shutdown
        self._writes: set[Deferred] = set()  # events being spooled, to wait for at shutdown
        self._unlisted = True  # the directory may hold events not in memory (at start: all of them)
        self._listing = False
        self._list_after = 0.0
        self._timer: Any = None
        self._pumping = self._pump_again = False
        self._closed = False
        self._failing = False  # one log line per outage, not one per event

    @property
    def in_memory(self) -> int:
        """How many event ids the sender holds (for tests and metrics)."""
        return len(self._known)

    def start(self) -> None:
        """Resume what the spool holds."""
        self._pump()

    def accept(self, body: bytes, now: float) -> None:
        """Spool one event; it is sent once it is on disk. Returns at once."""
        event_id = new_event_id(now)
        written = self._spool.add(event_id, body, now)
        self._writes.add(written)
        written.addBoth(self._written, event_id, written)

    def _written(self, result: Any, event_id: str, written: Deferred) -> None:
        self._writes.discard(written)
        if isinstance(result, Failure):
            log.error("event_webhook {name}: could not spool an event, dropped: {error}",
                      name=self.webhook.name, error=result.getErrorMessage())
            return
        if self._closed:
            return  # on disk: the next start sends it
        now = self._clock.seconds()
        if len(self._known) >= self._max_in_memory:
            self._unlisted = True
            if not self._due or self._due[-1][0] <= now:
                return  # memory holds only events due now: this one waits on disk
            _, later = self._due.pop()  # a new event goes before a retry due later, which waits on disk
            self._known.discard(later)
        self._hold(now, event_id)
        self._pump()

    def close(self) -> Deferred:
        """Stop sending (POSTs in flight are cancelled; their events stay spooled); fires once spooling is done."""
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for post in list(self._posts.values()):
            post.cancel()
        return DeferredList(list(self._writes))

    # --- what to send next ---------------------------------------------------------

    def _hold(self, due: float, event_id: str) -> None:
        bisect.insort(self._due, (due, event_id))
        self._known.add(event_id)

    def _pump(self) -> None:
        """Start what is due, as far as MAX_IN_FLIGHT allows; wake up for the next; list the directory if there is room.

        An attempt that ends at once calls this again: that call is folded
        into the running one, so a run of missing files never recurses.
        """
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again and not self._closed:
                self._pump_again = False
                self._pump_once(self._clock.seconds())
        finally:
            self._pumping = False

    def _pump_once(self, now: float) -> None:
        while len(self._in_flight) < MAX_IN_FLIGHT and self._due and self._due[0][0] <= now:
            _, event_id = self._due.pop(0)
            Deferred.fromCoroutine(self._attempt(event_id)).addErrback(
                lambda failure: log.failure("event_webhook: attempt crashed", failure))
        self._wake_for_next(now)
        if (self._unlisted and not self._listing and now >= self._list_after
                and len(self._known) <= self._max_in_memory // 2):
            self._list()

    def _wake_for_next(self, now: float) -> None:
        if not self._due or len(self._in_flight) >= MAX_IN_FLIGHT:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            return
        delay = max(0.0, self._due[0][0] - now)
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._pump)

    def _list(self) -> None:
        self._listing, self._unlisted = True, False
        listed = self._spool.list_due(frozenset(self._known), self._max_in_memory - len(self._known))
        listed.addCallbacks(self._listed, self._listing_failed)

    def _listed(self, listing: Listing) -> None:
        self._listing = False
        found, more = listing
        self._unlisted = self._unlisted or more
        for due, event_id in found:
            if event_id in self._known:
                continue  # spooled, or picked up otherwise, while the directory was read
            if len(self._known) >= self._max_in_memory:
                self._unlisted = True
                break
            self._hold(due, event_id)
        self._pump()

    def _listing_failed(self, failure: Failure) -> None:
        self._listing, self._unlisted = False, True
        self._list_after = self._clock.seconds() + LIST_RETRY_SECONDS
        log.error("event_webhook {name}: cannot list {dir}: {error}",
                  name=self.webhook.name, dir=self._spool.directory, error=failure.getErrorMessage())

    # --- one attempt ---------------------------------------------------------------

    async def _attempt(self, event_id: str) -> None:
        self._in_flight.add(event_id)
        try:
            await self._send(event_id)
        finally:
            self._in_flight.discard(event_id)
            self._pump()

    async def _send(self, event_id: str) -> None:
        try:
            body = await self._spool.read(event_id)
        except FileNotFoundError:
            self._known.discard(event_id)  # sent or dropped while it waited here
            return
        except OSError as error:
            return self._failed(event_id, f"cannot read {self._spool.path(event_id)}: {error}")
        if self._closed:
            return
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"mailgate/{__version__}",
            **signature_headers(event_id, int(self._clock.seconds()), body, self.webhook.secrets),
        }
        post = self._posts[event_id] = Deferred.fromCoroutine(exchange(self._http, self.webhook.url, headers, body))
        try:
            answer = await within(post, self.webhook.timeout_seconds, self._clock)
        except Exception as exc:  # timeout, refused, reset, DNS: the receiver may be back later
            if not self._closed:
                self._meters.webhook_answered(self.webhook.name, "error")
                self._failed(event_id, f"{type(exc).__name__}: {exc}")
            return
        finally:
            del self._posts[event_id]
        self._meters.webhook_answered(self.webhook.name, str(answer.status))
        self._answered(event_id, answer)

    def _answered(self, event_id: str, answer: Answer) -> None:
        if answer.ok:
            if self._failing:
                log.info("event_webhook {name}: {url} answers again ({answer})",
                         name=self.webhook.name, url=self.webhook.url, answer=answer)
                self._failing = False
            return self._remove(event_id)
        if answer.refused_for_good:
            log.warn("event_webhook {name}: {id} dropped: refused with {answer}",
                     name=self.webhook.name, id=event_id, answer=answer)
            return self._remove(event_id)
        self._failed(event_id, str(answer))

    def _failed(self, event_id: str, why: str) -> None:
        """A temporary failure: due again on relay.retry_intervals, or dropped after relay.max_queue_time."""
        now = self._clock.seconds()
        spooled = spooled_at(event_id)
        if self.policy.expired(spooled, now):
            log.warn("event_webhook {name}: {id} dropped: not delivered within relay.max_queue_time ({why})",
                     name=self.webhook.name, id=event_id, why=why)
            return self._remove(event_id)
        if not self._failing:
            log.warn("event_webhook {name}: {url} failed ({why}); events stay spooled and are retried",
                     name=self.webhook.name, url=self.webhook.url, why=why)
            self._failing = True
        due = now + self.policy.delay(attempts_by_age(self.policy, now - spooled))
        self._spool.postpone(event_id, due).addErrback(self._log_disk_error)
        self._hold(due, event_id)

    def _remove(self, event_id: str) -> None:
        """Delete the file; the id stays known until it is gone, so a listing meanwhile cannot take it again."""
        removed = self._spool.remove(event_id)
        removed.addErrback(self._log_disk_error)
        removed.addCallback(self._removed, event_id)

    def _removed(self, _: None, event_id: str) -> None:
        self._known.discard(event_id)
        self._pump()

    def _log_disk_error(self, failure: Failure) -> None:
        log.error("event_webhook {name}: {error}", name=self.webhook.name, error=failure.getErrorMessage())
