"""Outbound delivery: when each queued message is tried, along which routes, and its bounce.

Timing lives in one heap keyed by next attempt and one timer for its head:
nothing ever scans the queue after start-up, so a hundred thousand deferred
messages cost a heap entry each and nothing per new message.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from mailgate.store.group_commit import Batcher
from mailgate.config import GatewayConfig
from mailgate.outbound.dsn import RecipientStatus, build_dsn
from mailgate.core.envelope import Envelope
from mailgate.core.errors import DeliveryError
from mailgate.store.maildir_writer import StoredMessage
from mailgate.hooks.manager import first_answer
from mailgate.store.durable import unlink_quietly
from mailgate.outbound.spool import DELIVERED, FAILED, QueuedMessage, QueueStore, RecipientState
from mailgate.outbound.smtp_transport import RecipientResult
from mailgate.outbound.retry import RetryPolicy
from mailgate.core.trace import trace_header
from mailgate.core.wire import CRLFConverter

log = Logger()

MAX_CONCURRENT_ATTEMPTS = 20
Blocking = Callable[..., Deferred]
Inject = Callable[[Envelope, StoredMessage, str], Awaitable[None]]


class OutboundQueue:
    """Schedules and attempts queued messages; owns nothing on disk but through QueueStore."""

    def __init__(
        self,
        config: GatewayConfig,
        store: QueueStore,
        relay: Any,  # mailgate.outbound.smtp_transport.SMTPRelay
        hooks: Any,
        clock: Any,
        run_blocking: Blocking,
        inject: Inject | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self._relay = relay
        self._hooks = hooks
        self._clock = clock
        self._run = run_blocking
        # Writes to the spool share group commits, as Maildir deliveries do.
        self._adds: Batcher = Batcher(run_blocking, store.add_batch)
        self._saves: Batcher = Batcher(run_blocking, store.save_batch)
        self._removes: Batcher = Batcher(run_blocking, store.remove_batch)
        self.inject = inject  # how bounces are delivered; the service points it at the Deliverer
        self._policy = RetryPolicy.from_config(config.relay)
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}  # id -> its live heap time; stale heap entries skipped
        self._running: dict[str, Deferred] = {}
        self._deleted: set[str] = set()
        self._timer: Any = None
        self._stopping = False
        self._abandoned = False

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Resume everything a previous run left queued (one listing of env/)."""
        entries = await self._run(self._load_all)
        for queue_id, next_attempt in entries:
            self.schedule(queue_id, next_attempt)
        if entries:
            log.info("queue: resumed {count} queued message(s)", count=len(entries))

    def _load_all(self) -> list[tuple[str, float]]:
        self.store.prepare()
        return self.store.next_attempts()

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

    # --- accepting -----------------------------------------------------------

    async def add(
        self, queue_id: str, envelope: Envelope, recipients: Sequence[tuple[str, str]], message: StoredMessage
    ) -> None:
        """Store durably; the caller calls release() once the client may hear 250."""
        entry = QueuedMessage(
            id=queue_id,
            sender=envelope.mail_from,
            arrived=self._clock.seconds(),
            next_attempt=self._clock.seconds(),
            recipients=[RecipientState(address, route) for address, route in recipients],
        )
        await self._adds.submit((entry, message))

    def release(self, queue_id: str) -> None:
        self.schedule(queue_id, self._clock.seconds())

    async def cancel(self, queue_id: str) -> None:
        """Undo add() when the rest of the transaction failed (no 250 was sent)."""
        await self._removes.submit(queue_id)

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
        self._deleted.add(queue_id)
        return self._removes.submit(queue_id)

    def serve_requests(self) -> None:
        """Act on the CLI's flush and delete requests (a LoopingCall, once a second).

        The CLI waits for its request file to vanish, so it is removed only
        once the request is carried out.
        """
        for path, action, queue_id in self.store.requests():
            done = self.delete(queue_id) if action == "delete" else None
            if action == "flush":
                self.flush()
            if done is None:
                unlink_quietly(path)
            else:
                done.addBoth(lambda _, p=path: unlink_quietly(p))

    def _arm(self) -> None:
        """Keep one timer, set for the earliest live entry, while an attempt may start.

        With every slot busy there is no timer at all: `_finished` starts the
        next due entry. A timer then could start nothing and would only re-arm
        itself, spinning the reactor for as long as the backlog lasts.
        """
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        idle = self._stopping or not self._heap or len(self._running) >= MAX_CONCURRENT_ATTEMPTS
        active = self._timer is not None and self._timer.active()
        if active and not idle and abs(self._timer.getTime() - self._heap[0][0]) < 0.001:
            return
        if active:
            self._timer.cancel()
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
        """Try every pending recipient once, record the results, bounce or reschedule."""
        if queue_id in self._deleted:
            await self._removes.submit(queue_id)  # in case a save raced the delete
            return
        entry = await self._run(self.store.load, queue_id)
        if entry is None:
            return
        groups = self._groups(entry)
        outcomes = await DeferredList(
            [Deferred.fromCoroutine(self._deliver_group(entry, key, rcpts)) for key, rcpts in groups.items()],
            consumeErrors=True,
        )
        results = {r.recipient: r for ok, found in outcomes if ok for r in found}
        failed_now = self._record(entry, results)
        if self._abandoned:
            return  # stop() gave up waiting: leave the entry as it was
        await self._settle(entry, failed_now)

    def _groups(self, entry: QueuedMessage) -> dict[tuple[str, ...], list[RecipientState]]:
        """One connection per destination: by domain for MX, by host for smarthost and smtp:."""
        groups: dict[tuple[str, ...], list[RecipientState]] = defaultdict(list)
        smarthost = self._config.relay.smarthost
        for recipient in entry.pending():
            scheme, _, argument = recipient.route.partition(":")
            if scheme == "mx" and smarthost:
                groups[("host", smarthost)].append(recipient)
            elif scheme == "mx":
                groups[("mx", recipient.address.rpartition("@")[2])].append(recipient)
            elif scheme == "smtp":
                groups[("host", argument)].append(recipient)
            else:
                groups[("plugin", recipient.route)].append(recipient)
        return groups

    async def _deliver_group(
        self, entry: QueuedMessage, key: tuple[str, ...], recipients: list[RecipientState]
    ) -> list[RecipientResult]:
        addresses = [r.address for r in recipients]
        path = self.store.message_path(entry.id)
        kind, target = key
        if kind == "mx":
            return await self._relay.deliver_by_mx(target, entry.sender, addresses, path)
        if kind == "host":
            host, _, port = target.rpartition(":")
            return await self._relay.deliver_to_host(host.strip("[]"), int(port), entry.sender, addresses, path)
        return await self._deliver_by_plugin(entry, target, addresses, path)

    async def _deliver_by_plugin(
        self, entry: QueuedMessage, route: str, addresses: list[str], path: str
    ) -> list[RecipientResult]:
        message = await self._run(_read_wire_form, path)
        envelope = Envelope(mail_from=entry.sender, rcpt_to=addresses)
        try:
            answer = await first_answer(self._hooks.mailgate_deliver, route=route, envelope=envelope, message=message)
        except DeliveryError as exc:
            log.info("{id}: route {route}: {code} {reason}", id=entry.id, route=route, code=exc.code, reason=exc.reason)
            return _same_result(addresses, exc.code, exc.enhanced, exc.reply)
        except Exception as exc:  # fail closed: a crashing plugin means "try later"
            log.failure("plugin delivery crashed for route {route}", route=route)
            return _same_result(addresses, 451, "4.3.0", f"plugin error: {exc!r}")
        if answer is None:
            return _same_result(addresses, 451, "4.3.5", f"no plugin delivers route {route}")
        return _same_result(addresses, 250, "2.0.0", "delivered by plugin")

    def _record(self, entry: QueuedMessage, results: dict[str, RecipientResult]) -> list[RecipientState]:
        """Apply one attempt's results; return the recipients that failed for good now."""
        now = self._clock.seconds()
        entry.attempts += 1
        was_pending = entry.pending()
        for recipient in entry.pending():
            result = results.get(recipient.address)
            if result is None:
                result = RecipientResult(recipient.address, 451, "4.3.0", "delivery attempt failed", None)
            recipient.code, recipient.enhanced = result.code, result.enhanced
            recipient.diagnostic, recipient.remote_mta = result.text, result.remote_mta
            if 200 <= result.code < 300:
                recipient.status = DELIVERED
            elif result.code >= 500:
                recipient.status = FAILED
            else:
                entry.last_error = f"{result.code} {result.enhanced} {result.text}"
        if entry.pending() and self._policy.expired(entry.arrived, now):
            for recipient in entry.pending():
                recipient.status = FAILED
                recipient.enhanced = "4.4.7"
                recipient.diagnostic = f"message expired in queue; last error: {recipient.diagnostic}"
        entry.next_attempt = now + self._policy.delay(entry.attempts)
        log.info(
            "{id}: attempt {n}: {delivered} delivered, {failed} failed, {pending} deferred",
            id=entry.id, n=entry.attempts, delivered=sum(r.status == DELIVERED for r in entry.recipients),
            failed=len(entry.failed()), pending=len(entry.pending()),
        )
        return [r for r in was_pending if r.status == FAILED]

    async def _settle(self, entry: QueuedMessage, failed_now: list[RecipientState]) -> None:
        """Bounce what failed in this attempt at once (as Postfix does: a sender
        hears of a hard failure without waiting for other recipients' retries),
        then keep the entry for what is still pending, or drop it."""
        if entry.id in self._deleted:
            return
        if failed_now and entry.sender:
            await self._report(entry, failed_now, "failed")
        if self._delay_warning_due(entry):
            entry.warned = True
            await self._report(entry, entry.pending(), "delayed")
        if entry.pending():
            await self._saves.submit(entry)
            self.schedule(entry.id, entry.next_attempt)
            return
        await self._removes.submit(entry.id)

    def _delay_warning_due(self, entry: QueuedMessage) -> bool:
        """relay.delay_warning: once per message, as Postfix's delay_warning_time."""
        after = self._config.relay.delay_warning_seconds
        waited = self._clock.seconds() - entry.arrived
        return bool(after and entry.sender and entry.pending() and not entry.warned and waited >= after)

    async def _report(self, entry: QueuedMessage, recipients: list[RecipientState], action: str) -> None:
        """An RFC 3464 report to the sender ("failed": a bounce; "delayed": a
        warning), sent from <> so reports never loop."""
        retry_until = datetime.fromtimestamp(entry.arrived + self._policy.max_queue_seconds, timezone.utc)
        statuses = [
            RecipientStatus(
                recipient=r.address, action=action,
                status=r.enhanced or ("5.0.0" if action == "failed" else "4.0.0"),
                diagnostic=" ".join(str(part) for part in (r.code, r.enhanced, r.diagnostic) if part),
                remote_mta=r.remote_mta, will_retry_until=retry_until if action == "delayed" else None,
            )
            for r in recipients
        ]
        hostname = self._config.server.hostname
        report = await self._run(
            lambda: build_dsn(
                reporting_mta=hostname, sender=entry.sender, statuses=statuses,
                original=self.store.message_path(entry.id),
                arrival=datetime.fromtimestamp(entry.arrived, timezone.utc), queue_id=entry.id,
            )
        )
        bounce_id = f"{entry.id}{'B' if action == 'failed' else 'W'}"
        envelope = Envelope(mail_from="", rcpt_to=[entry.sender], may_relay=True)
        header = trace_header(
            mail_from="", hostname=hostname, queue_id=bounce_id, protocol="local", recipients=[entry.sender]
        )
        message = StoredMessage.build(header, [report], len(report), report.count(b"\n"))
        assert self.inject is not None, "OutboundQueue.inject must be set before bounces"
        await self.inject(envelope, message, bounce_id)


def _same_result(addresses: list[str], code: int, enhanced: str, text: str) -> list[RecipientResult]:
    return [RecipientResult(address, code, enhanced, text, None) for address in addresses]


def _read_wire_form(path: str) -> bytes:
    """The stored message in CRLF form, for plugins (`mailgate_deliver` gets bytes)."""
    converter = CRLFConverter()
    with open(path, "rb") as handle:
        return converter.feed(handle.read()) + converter.finish()
