"""The workers' shared counters: kept by the master, asked over a socketpair in short lines (Postfix's anvil).

With `server.workers > 1` and `state.backend = "memory"` the master
process holds the one Admission and the one set of rate limiters of the
server; each worker asks it once per connection (`E ip`, before the
greeting) and once per rate-limited transaction (`T name key`), and tells
it when a connection has gone (`L ip`, no answer). The connection is a
socketpair the master made before starting the worker, so no path or port
is exposed and nothing has to be cleaned up. The master answers every
question at once and in order (`A answer`), so a worker matches answers
to questions by order alone, and a Leave never overtakes its Enter.

The same link carries the workers' other news, none of which is answered:
AUTH failures and successes (`F`/`S ip account`, to the master and from
it to every other worker) and what mailgate.app.workers adds (`H`ello,
`Q`ueued).

Why lines and not AMP, and not leases: AMP cost about 0.28 ms of CPU per
connection across both processes (bench/RESULTS.md, issue 18): boxes
built, parsed and dispatched through several layers for each Enter and
Leave. A line is a verb and space-separated fields, split once; questions
asked in one reactor turn leave in one send (the transport buffers what is
written until the reactor's next write pass), and the master answers all
the questions of one read in one write. Measured in one process over a
real socketpair, both ends' CPU per connection (Enter answered, Leave):
AMP 110-130 us, lines 56-65 us one connection at a time and 24-26 us with
50 at once. That keeps the one round trip per connection Postfix's smtpd
also makes, and the master the only judge: the limits are exactly as strict
as one process's, and a dead worker's connections are uncounted when its
link closes. Leases (each worker admitting within its share of each limit
without asking, the master revoking unused shares before it refuses) would
save the round trip too, but a share must still be given back when each
connection ends, and exactness then rests on revocation racing admission
in several processes: more code, and more ways to be wrong, for the tens
of microseconds left.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable
from urllib.parse import quote, unquote

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from mailgate.config import LimitsConfig
from mailgate.limits.admission import Admission, Refusal
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.limits.rate import RateLimiter

log = Logger()

UNLIMITED_DESCRIPTORS = 1 << 30  # the master holds no client's socket: each worker guards its own
LONGEST_LINE = 1 << 16  # a peer sending more without a line end is broken: the link is closed

ENTER, LEAVE, TAKE, ANSWER = b"E", b"L", b"T", b"A"
FAILED, SUCCEEDED = b"F", b"S"  # an AUTH or POP3 login failed / succeeded: ip, account


def encode(verb: bytes, fields: tuple[str, ...]) -> bytes:
    """One line: the verb and each field, a field's space, CR, LF and % written %XX."""
    parts = [verb]
    for text in fields:
        data = text.encode("utf-8", "surrogateescape")
        if b" " in data or b"\n" in data or b"\r" in data or b"%" in data:
            data = quote(data, safe="").encode("ascii")
        parts.append(data)
    return b" ".join(parts) + b"\n"


def decode(raw: bytes) -> tuple[bytes, list[str]]:
    verb, *fields = raw.split(b" ")
    return verb, [unquote(field.decode("ascii"), errors="surrogateescape") if b"%" in field
                  else field.decode("utf-8", "surrogateescape") for field in fields]


class LineLink(LineOnlyReceiver):
    """Either end of the socketpair: lines in (Twisted's LineOnlyReceiver splits them), lines out.

    What `send` writes while a read is being handled goes out in one write
    after it, so a batch of questions is answered by a batch of answers.
    """

    delimiter = b"\n"
    MAX_LENGTH = LONGEST_LINE

    def __init__(self) -> None:
        self._batch: list[bytes] | None = None
        self.lost = False  # the other end has gone

    def dataReceived(self, data: bytes) -> None:
        batch: list[bytes] = []
        self._batch = batch
        try:
            super().dataReceived(data)
        finally:
            self._batch = None
            if batch and self.transport is not None:
                self.transport.write(b"".join(batch))

    def lineReceived(self, line: bytes) -> None:
        verb, fields = decode(line)
        self.line_received(verb, fields)

    def lineLengthExceeded(self, line: bytes) -> None:
        log.error("workers: a line of more than {count} bytes on the master's link: closing it", count=LONGEST_LINE)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def send(self, verb: bytes, *fields: str) -> bool:
        """Write one line (in this read's batch, if one is being handled); False if the link is gone."""
        if self.lost or self.transport is None:
            return False
        line = encode(verb, fields)
        if self._batch is not None:
            self._batch.append(line)
        else:
            self.transport.write(line)
        return True

    def line_received(self, verb: bytes, fields: list[str]) -> None:
        raise NotImplementedError

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Counters:
    """The master's side: the server's one Admission and one RateLimiter per shared rate."""

    def __init__(self, limits: LimitsConfig, clock: IReactorTime) -> None:
        self.admission = Admission(limits, clock, descriptors=UNLIMITED_DESCRIPTORS)
        self.rates = {"sender": RateLimiter(limits.sender_rate, clock)}

    def enter(self, ip: str) -> str:
        refusal = self.admission.enter(ip)
        return refusal.name if refusal is not None else ""

    def take(self, name: str, key: str) -> float:
        rate = self.rates.get(name)
        return rate.take(key) if rate is not None else 0.0


class AnvilResponder(LineLink):
    """The master's end of one worker's link to the Counters; the connections it counted are
    uncounted if the worker dies, so a crash leaves no address over its limit. Lines that are
    not questions go to `heard` (mailgate.app.workers)."""

    def __init__(self, counters: Counters) -> None:
        super().__init__()
        self._counters = counters
        self._open: dict[str, int] = {}

    def line_received(self, verb: bytes, fields: list[str]) -> None:
        if verb == ENTER:
            ip = fields[0]
            self._open[ip] = self._open.get(ip, 0) + 1
            self.send(ANSWER, self._counters.enter(ip))
        elif verb == LEAVE:
            ip = fields[0]
            if self._open.get(ip, 0) > 0:
                self._open[ip] -= 1
                self._counters.admission.leave(ip)
        elif verb == TAKE:
            self.send(ANSWER, repr(self._counters.take(fields[0], fields[1])))
        else:
            self.heard(verb, fields)

    def heard(self, verb: bytes, fields: list[str]) -> None:
        """A line that is not a question about the counters."""

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        for ip, count in self._open.items():
            for _ in range(count):
                self._counters.admission.leave(ip)
        self._open.clear()


class AnvilLink(LineLink):
    """A worker's end: its questions' answers, in order, and the failures and successes other
    workers saw, applied to this worker's AuthThrottle. Other lines go to `heard`."""

    throttle: AuthThrottle | None = None

    def __init__(self) -> None:
        super().__init__()
        self._waiting: deque[Deferred[str]] = deque()

    def ask(self, verb: bytes, *fields: str) -> Deferred[str]:
        """A question: its answer, or a Failure if the master has gone (or goes before answering)."""
        if not self.send(verb, *fields):
            return fail(ConnectionDone("the master's link is closed"))
        waiting: Deferred[str] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def line_received(self, verb: bytes, fields: list[str]) -> None:
        if verb == ANSWER:
            if self._waiting:
                self._waiting.popleft().callback(fields[0] if fields else "")
        elif verb == FAILED or verb == SUCCEEDED:
            if self.throttle is not None:
                record = self.throttle.record_failure if verb == FAILED else self.throttle.record_success
                record(fields[0], fields[1])
        else:
            self.heard(verb, fields)

    def heard(self, verb: bytes, fields: list[str]) -> None:
        """A line from the master that is neither an answer nor AUTH news."""

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        waiting, self._waiting = self._waiting, deque()
        for question in waiting:
            question.errback(reason if reason is not None else ConnectionDone())


def _refusal(answer: str) -> Refusal | None:
    return Refusal[answer] if answer else None


class AnvilClient:
    """A worker's SharedState: every question goes to the master over `link`.

    The master is this worker's parent; if the link is gone the master is
    too and the worker is about to be stopped: answers then admit (fail
    open for the moment left), with one log line.
    """

    def __init__(self, link: AnvilLink) -> None:
        self._link = link
        self._warned = False

    def enter(self, ip: str) -> Deferred[Refusal | None]:
        d = self._link.ask(ENTER, ip).addCallback(_refusal)
        return d.addErrback(self._lost, None)

    def leave(self, ip: str) -> None:
        self._link.send(LEAVE, ip)  # the master gone: so are its counts

    def take(self, name: str, key: str) -> Deferred[float]:
        return self._link.ask(TAKE, name, key).addCallback(float).addErrback(self._lost, 0.0)

    def available(self) -> bool:
        return True

    def share_throttle(self, throttle: AuthThrottle) -> MirroredThrottle:
        """This worker's AuthThrottle, told of every other worker's failures and telling them its own."""
        self._link.throttle = throttle
        return MirroredThrottle(throttle, self._tell)

    def _tell(self, kind: str, ip: str, account: str) -> None:
        self._link.send(FAILED if kind == "failed" else SUCCEEDED, ip, account)  # gone: this worker stops

    def _lost(self, failure: Any, answer: Any) -> Any:
        if not self._warned:
            self._warned = True
            log.warn("workers: the master's counters are unreachable ({error}): limits not applied",
                     error=failure.getErrorMessage())
        return answer


class MirroredThrottle:
    """The AuthThrottle of one process, whose failures and successes every other process also counts.

    The password-guessing limits must hold for the whole server (or every
    node), and the SMTP and POP3 code asks its throttle synchronously, in
    the session's own turn: so rather than asking elsewhere each time,
    every process keeps the failures of all, each told to the others as it
    happens (`tell`: through the master, or Redis pub/sub). What a process
    decides from it is exact but for guesses of the same pair being checked
    elsewhere at that very moment (one hop): at most one per process beyond
    the limit.
    """

    def __init__(self, throttle: AuthThrottle, tell: Callable[[str, str, str], None]) -> None:
        self._throttle, self._tell = throttle, tell
        self.admit, self.release = throttle.admit, throttle.release
        self.failures, self.delay_seconds, self.locked_out = throttle.failures, throttle.delay_seconds, throttle.locked_out

    def record_failure(self, ip: str, account: str) -> None:
        self._throttle.record_failure(ip, account)
        self._tell("failed", ip, account)

    def record_success(self, ip: str, account: str) -> None:
        self._throttle.record_success(ip, account)
        self._tell("succeeded", ip, account)

    def heard(self, kind: str, ip: str, account: str) -> None:
        """Another process's news: counted here, not told again."""
        if kind == "failed":
            self._throttle.record_failure(ip, account)
        elif kind == "succeeded":
            self._throttle.record_success(ip, account)
