"""The workers' shared counters: kept by the master, asked over a local AMP connection (Postfix's anvil).

With `server.workers > 1` and `state.backend = "memory"` the master
process holds the one Admission and the one set of rate limiters of the
server; each worker asks it once per connection (`Enter`) and once per
rate-limited transaction (`Take`), and tells it when a connection has gone
(`Leave`, no answer). The connection is a socketpair the master made before
starting the worker, so no path or port is exposed and nothing has to be
cleaned up; AMP answers in order on it, so a Leave never overtakes its Enter.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from mailgate.config import LimitsConfig
from mailgate.limits.admission import Admission, Refusal
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.limits.rate import RateLimiter

log = Logger()

UNLIMITED_DESCRIPTORS = 1 << 30  # the master holds no client's socket: each worker guards its own


class Enter(amp.Command):
    arguments = [(b"ip", amp.Unicode())]
    response = [(b"refusal", amp.Unicode())]  # a Refusal's name, or ""


class Leave(amp.Command):
    arguments = [(b"ip", amp.Unicode())]
    requiresAnswer = False


class Take(amp.Command):
    arguments = [(b"name", amp.Unicode()), (b"key", amp.Unicode())]
    response = [(b"wait", amp.Float())]


class AuthFailed(amp.Command):
    """A worker -> the master -> every other worker: a wrong password, to count there too."""

    arguments = [(b"ip", amp.Unicode()), (b"account", amp.Unicode())]
    requiresAnswer = False


class AuthSucceeded(amp.Command):
    arguments = [(b"ip", amp.Unicode()), (b"account", amp.Unicode())]
    requiresAnswer = False


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


class QuietAMP(amp.AMP):
    """AMP without its info lines for each connection made and lost: a worker's link is not news."""

    def makeConnection(self, transport: Any) -> None:
        self._transportPeer, self._transportHost = transport.getPeer(), transport.getHost()
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Any = None) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)


class AnvilResponder(QuietAMP):
    """One worker's connection to the master's Counters; the connections it counted are
    uncounted if the worker dies, so a crash leaves no address over its limit."""

    def __init__(self, counters: Counters) -> None:
        super().__init__()
        self._counters = counters
        self._open: dict[str, int] = {}

    @Enter.responder
    def _enter(self, ip: str) -> dict[str, Any]:
        self._open[ip] = self._open.get(ip, 0) + 1
        return {"refusal": self._counters.enter(ip)}

    @Leave.responder
    def _leave(self, ip: str) -> dict[str, Any]:
        if self._open.get(ip, 0) > 0:
            self._open[ip] -= 1
            self._counters.admission.leave(ip)
        return {}

    @Take.responder
    def _take(self, name: str, key: str) -> dict[str, Any]:
        return {"wait": self._counters.take(name, key)}

    def connectionLost(self, reason: Any = None) -> None:
        for ip, count in self._open.items():
            for _ in range(count):
                self._counters.admission.leave(ip)
        self._open.clear()
        super().connectionLost(reason)


class AnvilClient:
    """A worker's SharedState: every question goes to the master over `protocol`.

    The master is this worker's parent; if the connection is gone the master
    is too and the worker is about to be stopped: answers then admit
    (fail open for the moment left), with one log line.
    """

    def __init__(self, protocol: amp.AMP) -> None:
        self._protocol = protocol
        self._warned = False

    def enter(self, ip: str) -> Deferred[Refusal | None]:
        d = self._protocol.callRemote(Enter, ip=ip)
        d.addCallback(lambda answer: Refusal[answer["refusal"]] if answer["refusal"] else None)
        return d.addErrback(self._lost, None)

    def leave(self, ip: str) -> None:
        try:
            self._protocol.callRemote(Leave, ip=ip)
        except Exception:  # the master has gone: so have its counts
            pass

    def take(self, name: str, key: str) -> Deferred[float]:
        d = self._protocol.callRemote(Take, name=name, key=key)
        return d.addCallback(lambda answer: float(answer["wait"])).addErrback(self._lost, 0.0)

    def available(self) -> bool:
        return True

    def share_throttle(self, throttle: AuthThrottle) -> MirroredThrottle:
        """This worker's AuthThrottle, told of every other worker's failures and telling them its own."""
        if isinstance(self._protocol, ThrottleLink):
            self._protocol.throttle = throttle
        return MirroredThrottle(throttle, self._tell)

    def _tell(self, kind: str, ip: str, account: str) -> None:
        try:
            self._protocol.callRemote(AuthFailed if kind == "failed" else AuthSucceeded, ip=ip, account=account)
        except Exception:  # the master has gone: this worker is about to stop
            pass

    def _lost(self, failure: Any, answer: Any) -> Any:
        if not self._warned:
            self._warned = True
            log.warn("workers: the master's counters are unreachable ({error}): limits not applied",
                     error=failure.getErrorMessage())
        return succeed(answer)


class ThrottleLink(QuietAMP):
    """A worker's link: failures and successes other workers saw, applied to this worker's AuthThrottle."""

    throttle: AuthThrottle | None = None

    @AuthFailed.responder
    def _auth_failed(self, ip: str, account: str) -> dict[str, Any]:
        if self.throttle is not None:
            self.throttle.record_failure(ip, account)
        return {}

    @AuthSucceeded.responder
    def _auth_succeeded(self, ip: str, account: str) -> dict[str, Any]:
        if self.throttle is not None:
            self.throttle.record_success(ip, account)
        return {}


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
