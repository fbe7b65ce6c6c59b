"""Outbound delivery: when each queued message is tried, through which transport, and what follows.

Timing lives in one heap keyed by next attempt and one timer for its head:
nothing ever scans the queue after start-up, so a hundred thousand deferred
messages cost a heap entry each and nothing per new message. Which
transport delivers a recipient is the route scheme's business, how it
groups recipients the transport's; the scheduler only runs attempts.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Any, Callable, Hashable, Mapping

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailgate.core.queue_ids import part_of
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.core.session import Envelope, Session
from mailgate.hooks.events import Events
from mailgate.outbound.bounces import BounceSender
from mailgate.outbound.capacity import MAX_CONCURRENT_ATTEMPTS
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound.spool import DELIVERED, FAILED, DamagedEntry, QueuedMessage, RecipientState
from mailgate.outbound.spooler import Blocking, Spooler
from mailgate.outbound.transport import DeliveryJob, RecipientResult, Transport

log = Logger()

Group = tuple[Transport, Hashable]


class Scheduler:
    """Schedules and attempts queued messages; owns nothing on disk but through the Spooler.

    `transports` maps route schemes to the transport that delivers them;
    any other scheme goes to `default_transport` (plugins' mailgate_deliver).
    """

    def __init__(
        self,
        spooler: Spooler,
        transports: Mapping[str, Transport],
        default_transport: Transport,
        bounces: BounceSender,
        policy: RetryPolicy,
        clock: IReactorTime,
        run_blocking: Blocking,
        delay_warning_seconds: float = 0.0,
        events: Events | None = None,
    ) -> None:
        self.spooler = spooler
        self.store = spooler.store
        self._transports = transports
        self._default_transport = default_transport
        self._bounces = bounces
        self._policy = policy
        self._clock = clock
        self._run = run_blocking
        self._delay_warning_seconds = delay_warning_seconds
        self._events = events if events is not None else Events(None)
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}  # id -> its live heap time; stale heap entries skipped
        self._running: dict[str, Deferred] = {}
        self._fresh: dict[str, QueuedMessage] = {}  # released here, not attempted yet: see attempt()
        self._deleted: set[str] = set()
        self._held: set[str] = set()  # `mailgate queue hold`: never started until released
        self._timer: IDelayedCall | None = None
        self._stopping = False
        self._abandoned = False
        self._forward: Callable[[str], None] | None = None
        self._part = (0, 1)  # (this process's part of the spool, how many): share()
        self.prepare_spool = True  # clear what a crash left; False where other processes write (workers)
        spooler.on_release(self._released)

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Resume everything a previous run left queued (one listing of env/)."""
        set_aside, entries = await self._run(self._load_all)
        for queue_id, reason in set_aside:
            _log_set_aside(queue_id, reason)
        self.spooler.index.resumed(queue_id for queue_id, _ in entries)
        for queue_id, next_attempt in entries:
            self.schedule(queue_id, next_attempt)
        if entries:
            log.info("queue: resumed {count} queued message(s)", count=len(entries))

    def _load_all(self) -> tuple[list[tuple[str, str]], list[tuple[str, float]]]:
        set_aside = self.store.prepare() if self.prepare_spool else []
        index, parts = self._part
        mine = (lambda queue_id: part_of(queue_id, parts) == index) if parts > 1 else None  # not a stat of others'
        return set_aside, self.store.next_attempts(mine)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop starting attempts; wait for those in flight, but not past the grace.

        An attempt still running then is abandoned, not recorded: its message
        stays queued as it was and is tried again after the restart (a remote
        server that stalls must not hold up a SIGTERM for minutes).
        """
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if not self._running:
            return
        done = DeferredList(list(self._running.values()), consumeErrors=True)
        waiting: Deferred = Deferred()
        timer = self._clock.callLater(grace_seconds, waiting.callback, None)
        done.addBoth(lambda _: timer.cancel() if timer.active() else None)
        done.addBoth(lambda _: None if waiting.called else waiting.callback(None))
        await waiting
        self._abandoned = bool(self._running)
        if self._running:
            log.warn("queue: abandoned {count} attempt(s) in flight at shutdown", count=len(self._running))

    def share(self, index: int, parts: int, forward: Callable[[str], None]) -> None:
        """server.workers > 1: attempt only part `index` of `parts` of the spool (mailgate.core.queue_ids).
        start() resumes only that part; a released entry of another part goes to `forward`
        (to the worker whose part it is) and is never attempted here."""
        self._part, self._forward = (index, parts), forward

    def reconfigure(self, transports: Mapping[str, Transport], bounces: BounceSender, policy: RetryPolicy,
                    delay_warning_seconds: float = 0.0) -> None:
        """A reload: attempts started from now on use these; attempts in flight finish as they began."""
        self._transports, self._bounces, self._policy = transports, bounces, policy
        self._delay_warning_seconds = delay_warning_seconds

    def _released(self, entry: QueuedMessage) -> None:
        """A new entry whose client has been told 250: due now, here or in the worker whose part it is."""
        index, parts = self._part
        if self._forward is not None and part_of(entry.id, parts) != index:
            return self._forward(entry.id)
        self._fresh[entry.id] = entry
        self.schedule(entry.id, self._clock.seconds())

    # --- scheduling ----------------------------------------------------------

    def schedule(self, queue_id: str, at: float) -> None:
        self._due[queue_id] = at
        heapq.heappush(self._heap, (at, queue_id))
        self._arm()

    def flush(self) -> None:
        """Everything waiting is due now (`mailgate queue flush`)."""
        now = self._clock.seconds()
        for queue_id in list(self._due):
            self.schedule(queue_id, now)

    def delete(self, queue_id: str) -> Deferred:
        """Remove an entry (`mailgate queue delete`); an attempt in flight drops its result."""
        self._due.pop(queue_id, None)
        self._fresh.pop(queue_id, None)
        self._deleted.add(queue_id)
        return self.spooler.remove(queue_id)

    def hold(self, queue_id: str) -> Deferred:
        """`mailgate queue hold`: never attempted (nor expired) until released; an attempt in flight ends first."""
        self._due.pop(queue_id, None)
        self._fresh.pop(queue_id, None)
        self._held.add(queue_id)
        return Deferred.fromCoroutine(self._mark_held(queue_id, True))

    def release(self, queue_id: str) -> Deferred:
        """`mailgate queue release`: a held entry is due now."""
        self._held.discard(queue_id)
        return Deferred.fromCoroutine(self._mark_held(queue_id, False))

    async def _mark_held(self, queue_id: str, held: bool) -> None:
        if queue_id in self._running:
            await DeferredList([self._running[queue_id]])  # its results are saved first, and the mark goes on top
        try:
            entry = await self._run(self.store.load, queue_id)
        except DamagedEntry:
            return
        if entry is None or held == entry.held:
            return
        now = self._clock.seconds()
        entry.hold(now) if held else entry.release(now)
        await self.spooler.save(entry)
        if not held and queue_id not in self._held:
            self.schedule(queue_id, now)

    def entry_ids(self) -> Deferred[list[str]]:
        """Every entry queued or set aside, of every part (listed off the reactor)."""
        store = self.store
        return self._run(lambda: [*store.ids(), *store.corrupt.ids()])

    def _arm(self) -> None:
        """Keep one timer, set for the earliest live entry, while an attempt may start.

        With every slot busy there is no timer at all: `_finished` starts the
        next due entry. A timer then could start nothing and would only re-arm
        itself, spinning the reactor for as long as the backlog lasts.
        """
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        idle = self._stopping or not self._heap or len(self._running) >= MAX_CONCURRENT_ATTEMPTS
        timer = self._timer if self._timer is not None and self._timer.active() else None
        if timer is not None and not idle and abs(timer.getTime() - self._heap[0][0]) < 0.001:
            return
        if timer is not None:
            timer.cancel()
        self._timer = None
        if not idle:
            delay = max(0.0, self._heap[0][0] - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._start_due)

    def _start_due(self) -> None:
        """Start due entries while slots are free; by the timer or when an attempt ends."""
        now = self._clock.seconds()
        while self._heap and len(self._running) < MAX_CONCURRENT_ATTEMPTS and not self._stopping:
            at, queue_id = self._heap[0]
            if self._due.get(queue_id) != at:
                heapq.heappop(self._heap)
                continue
            if at > now:
                break
            heapq.heappop(self._heap)
            del self._due[queue_id]
            if queue_id not in self._running:
                self._start(queue_id)
        self._arm()

    def _start(self, queue_id: str) -> None:
        d = Deferred.fromCoroutine(self.attempt(queue_id))
        d.addErrback(self._crashed, queue_id)
        self._running[queue_id] = d
        d.addBoth(self._finished, queue_id)

    def _crashed(self, failure: Any, queue_id: str) -> None:
        log.failure("queue: attempt for {id} crashed; retrying later", failure, id=queue_id)
        self.schedule(queue_id, self._clock.seconds() + self._policy.delay(1))

    def _finished(self, result: Any, queue_id: str) -> None:
        self._running.pop(queue_id, None)
        self._start_due()

    # --- attempts ------------------------------------------------------------

    async def attempt(self, queue_id: str) -> None:
        """Try every pending recipient once, record the results, bounce or reschedule. A first attempt
        uses the entry as stored (`_fresh`); later ones read it back and check its message first."""
        fresh = self._fresh.pop(queue_id, None)
        if queue_id in self._deleted:
            await self.spooler.remove(queue_id)  # in case a save raced the delete
            return
        if queue_id in self._held:
            return
        try:
            entry = fresh if fresh is not None else await self._run(self.store.load_checked, queue_id)
        except DamagedEntry as damage:
            await self._set_aside(queue_id, str(damage))
            return
        if entry is None:
            return
        if entry.held:  # held before a restart: resumed with the others, never tried
            self._held.add(queue_id)
            self.spooler.index.note(entry)
            return
        groups = self._groups(entry)
        outcomes = await DeferredList(
            [Deferred.fromCoroutine(self._deliver_group(entry, group, rcpts)) for group, rcpts in groups.items()],
            consumeErrors=True,
        )
        results = {r.recipient: r for ok, found in outcomes if ok for r in found}
        failed_now = self._record(entry, results)
        if self._abandoned:
            return  # stop() gave up waiting: leave the entry as it was
        await self._settle(entry, failed_now, results)

    async def _set_aside(self, queue_id: str, reason: str) -> None:
        """A damaged entry goes to corrupt/ with one log line, never to be tried again:
        every attempt would fail alike, and a message cut short must not be relayed."""
        if queue_id in self._deleted:
            return  # `queue delete` took its files while they were read
        try:
            moved = await self._run(self.store.set_aside, queue_id, reason)
        except OSError as error:  # it stays in env/, unscheduled until the next start
            log.error("queue: {id}: damaged ({reason}), and not moved to corrupt/: {error}",
                      id=queue_id, reason=reason, error=error)
            return
        self.spooler.index.discard(queue_id)
        if moved:
            _log_set_aside(queue_id, reason)

    def _groups(self, entry: QueuedMessage) -> dict[Group, list[RecipientState]]:
        """Pending recipients by (transport, destination): one delivery each."""
        groups: dict[Group, list[RecipientState]] = defaultdict(list)
        for recipient in entry.pending():
            route = Route(recipient.route)
            transport = self._transports.get(route.scheme, self._default_transport)
            groups[(transport, transport.destination(recipient.address, route))].append(recipient)
        return groups

    async def _deliver_group(self, entry: QueuedMessage, group: Group,
                             recipients: list[RecipientState]) -> list[RecipientResult]:
        transport, destination = group
        envelope = Envelope(
            mail_from=entry.sender, rcpt_to=[r.address for r in recipients],
            parameters=dict(entry.parameters), session=Session.from_dict(entry.session),
            recipient_parameters={r.address: r.dsn_parameters() for r in recipients if r.notify or r.orcpt},
        )
        job = DeliveryJob(entry.id, envelope, Route(recipients[0].route), destination,
                          self.store.message_path(entry.id), entry.wire_size)
        return await transport.deliver(job)

    def _record(self, entry: QueuedMessage, results: dict[str, RecipientResult]) -> list[RecipientState]:
        """Apply one attempt's results; return the recipients that failed for good now."""
        now = self._clock.seconds()
        entry.attempts += 1
        was_pending = entry.pending()
        for recipient in entry.pending():
            result = results.get(recipient.address)
            reply = result.reply if result is not None else Reply(451, "4.3.0", "delivery attempt failed")
            recipient.code, recipient.enhanced, recipient.diagnostic = reply.code, reply.enhanced, reply.one_line
            recipient.remote_mta = result.remote_mta if result is not None else None
            recipient.reporting_mta = result.reporting_mta if result is not None else None
            if reply.positive:
                recipient.status = DELIVERED
            elif reply.permanent:
                recipient.status = FAILED
            else:
                entry.last_error = str(reply)
        expired = entry.pending() if self._policy.expired(entry.arrived + entry.held_seconds, now) else []
        for recipient in expired:
            recipient.status = FAILED
            recipient.enhanced = "4.4.7"
            recipient.diagnostic = f"message expired in queue; last error: {recipient.diagnostic}"
        entry.next_attempt = now + self._policy.delay(entry.attempts)
        if self._events.wanted:
            self._tell(entry, was_pending, results, expired)
        log.info(
            "{id}: attempt {n}: {delivered} delivered, {failed} failed, {pending} deferred",
            id=entry.id, n=entry.attempts, delivered=sum(r.status == DELIVERED for r in entry.recipients),
            failed=len(entry.failed()), pending=len(entry.pending()),
        )
        _warn_maybe_delivered(entry.id, [r for r in results.values() if r.maybe_delivered])
        return [r for r in was_pending if r.status == FAILED]

    def _tell(self, entry: QueuedMessage, attempted: list[RecipientState], results: dict[str, RecipientResult],
              expired: list[RecipientState]) -> None:
        """One mailgate_event per recipient attempted: delivered, deferred, bounced or expired.

        Beyond the SPEC's keys: `relay` (the host that answered, else the
        route) and `delay` (seconds since arrival), for the log's lines."""
        delay = round(self._clock.seconds() - entry.arrived, 3)
        for recipient in attempted:
            result = results.get(recipient.address)
            kind = ("expired" if recipient in expired else "delivered" if recipient.status == DELIVERED
                    else "bounced" if recipient.status == FAILED else "deferred")
            self._events.emit(kind, queue_id=entry.id, mail_from=entry.sender, recipient=recipient.address,
                              route=recipient.route, reply=result.reply if result is not None else None,
                              attempt=entry.attempts, delay=delay,
                              relay=result.remote_mta if result is not None and result.remote_mta else recipient.route)

    async def _settle(self, entry: QueuedMessage, failed_now: list[RecipientState],
                      results: dict[str, RecipientResult]) -> None:
        """Bounce what failed in this attempt at once (as Postfix does: a sender
        hears of a hard failure without waiting for other recipients' retries),
        report success where NOTIFY asked for it, then keep the entry for what
        is still pending, or drop it."""
        if entry.id in self._deleted:
            return
        if failed_now and entry.sender:
            await self._bounces.report(entry, failed_now, "failed")
        await self._bounces.report_success(entry, results)
        if self._delay_warning_due(entry):
            entry.warned = True
            await self._bounces.report(entry, entry.pending(), "delayed")
        if entry.pending():
            await self.spooler.save(entry)
            if entry.id not in self._held:
                self.schedule(entry.id, entry.next_attempt)
            return
        await self.spooler.remove(entry.id)

    def _delay_warning_due(self, entry: QueuedMessage) -> bool:
        """relay.delay_warning: once per message, as Postfix's delay_warning_time."""
        after = self._delay_warning_seconds
        waited = self._clock.seconds() - entry.arrived
        return bool(after and entry.sender and entry.pending() and not entry.warned and waited >= after)


def _log_set_aside(queue_id: str, reason: str) -> None:
    log.error("queue: {id}: damaged entry set aside in corrupt/: {reason}", id=queue_id, reason=reason)


def _warn_maybe_delivered(queue_id: str, results: list[RecipientResult]) -> None:
    """One line when a final reply was lost: the retry may deliver a second copy (as Postfix warns)."""
    if results:
        log.warn("{id}: to={to}: {why}; it stays queued, and a retry may deliver a second copy",
                 id=queue_id, to=",".join(r.recipient for r in results), why=results[0].reply.text)

