"""Limits' counters in Redis (state.backend = "redis://..."): one limit for every node sharing it.

Each question is one Lua script, run atomically by Redis, so two nodes
asking at once can never both take the last token or the last connection
slot. Time is Redis's own (`TIME`), so the nodes' clocks need not agree.
Keys start with `mailgate:`; a script touching two keys (a connection's
count and the address's connection rate) has them share a hash tag, the
address, so they live in one Redis Cluster slot.

Counts (open connections per address) expire an hour after the address's
last new connection: a node that dies without uncounting its connections
blocks nobody for longer than that.

Redis unreachable (no answer within CALL_TIMEOUT_SECONDS): every limit
fails open, with one log line, for at most `state.fallback_time`; past it,
`available()` is False and the sender policy answers 451 4.3.0 to MAIL
FROM until an answer comes back (connections keep asking, so the first
answer after Redis returns ends it), with one log line each way.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailgate.config import LimitsConfig, SenderRate, StateConfig
from mailgate.limits.admission import Refusal
from mailgate.limits.anvil import MirroredThrottle
from mailgate.limits.auth_throttle import AuthThrottle

log = Logger()

PREFIX = "mailgate:"
AUTH_CHANNEL = PREFIX + "auth"  # AUTH and POP3 failures and successes, JSON, from every process
CALL_TIMEOUT_SECONDS = 0.5  # a client waits no longer than this for its greeting while Redis is away
COUNT_EXPIRY_SECONDS = 3600

# KEYS[1]: a token bucket (hash: tokens, at). ARGV: capacity, tokens per second. -> seconds to wait.
BUCKET = """
local function take(key, capacity, rate)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
  local wait = 0
  if tokens < 1 then wait = (1 - tokens) / rate else tokens = tokens - 1 end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(capacity / rate * 1000) + 1000)
  return wait
end
"""
TAKE = BUCKET + "return tostring(take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])))"
# KEYS: count, rate bucket. ARGV: per-address limit, expiry, capacity, rate (capacity 0: no rate).
ENTER = BUCKET + """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if count > tonumber(ARGV[1]) then return 'PER_IP' end
if tonumber(ARGV[3]) > 0 and take(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4])) > 0 then return 'RATE' end
return ''
"""
PUBLISH = "return redis.call('PUBLISH', KEYS[1], ARGV[1])"
LEAVE = "if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end return 0"


def bucket_args(rate: SenderRate | None) -> list[float]:
    if rate is None:
        return [0, 0]
    return [rate.messages, rate.messages / rate.per_seconds]


class RedisState:
    """A SharedState in Redis; see the module docstring."""

    def __init__(self, connection: Any, limits: LimitsConfig, clock: IReactorTime, fallback_seconds: float,
                 where: str) -> None:
        self._redis, self._limits, self._clock = connection, limits, clock
        self._fallback, self._where = fallback_seconds, where
        self._rates = {"sender": limits.sender_rate}
        self._down_since: float | None = None
        self._node = uuid.uuid4().hex  # who published an AUTH event: not counted twice by its sender
        self._mirrored: MirroredThrottle | None = None
        self._counted: dict[str, int] = {}  # connections Redis counted, per address, until they leave
        self._pending: dict[str, int] = {}  # ENTERs not answered yet
        self._owed: dict[str, int] = {}  # connections that left while their ENTER was unanswered
        self._refusing = False

    @classmethod
    def from_config(cls, state: StateConfig, limits: LimitsConfig, clock: IReactorTime) -> RedisState:
        import txredisapi  # type: ignore[import-untyped]  # here: it imports the global reactor

        url = urllib.parse.urlsplit(state.backend)
        connection = txredisapi.lazyConnection(url.hostname, url.port or 6379, int(url.path.strip("/") or "0"),
                                               reconnect=True, connectTimeout=CALL_TIMEOUT_SECONDS,
                                               replyTimeout=CALL_TIMEOUT_SECONDS * 4)
        return cls(connection, limits, clock, state.fallback_seconds, f"{url.hostname}:{url.port or 6379}")

    def enter(self, ip: str) -> Deferred[Refusal | None]:
        keys = [f"{PREFIX}conn:{{{ip}}}", f"{PREFIX}connrate:{{{ip}}}"]
        args = [self._limits.max_connections_per_ip, COUNT_EXPIRY_SECONDS, *bucket_args(self._limits.connection_rate)]
        self._pending[ip] = self._pending.get(ip, 0) + 1
        d = self._call(ENTER, keys, args, None)  # None: no answer, nothing was counted in Redis
        return d.addCallback(self._entered, ip)

    def _entered(self, answer: str | None, ip: str) -> Refusal | None:
        _decrement(self._pending, ip)
        if answer is None:
            return None
        if self._owed.get(ip):  # it left before Redis answered: take it back now
            _decrement(self._owed, ip)
            self._call(LEAVE, [f"{PREFIX}conn:{{{ip}}}"], [], 0)
        else:
            self._counted[ip] = self._counted.get(ip, 0) + 1
        return Refusal[answer] if answer else None

    def leave(self, ip: str) -> None:
        """Uncount a connection Redis counted; one that entered while Redis was away was never counted,
        and taking it back would uncount another."""
        if self._counted.get(ip):
            _decrement(self._counted, ip)
            self._call(LEAVE, [f"{PREFIX}conn:{{{ip}}}"], [], 0)
        elif self._pending.get(ip):
            self._owed[ip] = self._owed.get(ip, 0) + 1

    def take(self, name: str, key: str) -> Deferred[float]:
        rate = self._rates.get(name)
        if rate is None:
            return succeed(0.0)
        d = self._call(TAKE, [f"{PREFIX}rate:{name}:{{{key}}}"], bucket_args(rate), "0")
        return d.addCallback(float)

    def share_throttle(self, throttle: AuthThrottle) -> MirroredThrottle:
        """This process's AuthThrottle, kept in step with every other process's over Redis pub/sub
        (channel mailgate:auth): failures and successes are published, and those of others counted."""
        import txredisapi

        mirrored = MirroredThrottle(throttle, self._publish)
        self._mirrored = mirrored
        factory = txredisapi.SubscriberFactory()
        factory.protocol = auth_events(txredisapi.SubscriberProtocol)
        factory.state = self
        factory.continueTrying = True
        host, _, port = self._where.rpartition(":")
        factory.startConnecting(txredisapi._makeEndpoint(host, int(port), CALL_TIMEOUT_SECONDS))
        return mirrored

    def _publish(self, kind: str, ip: str, account: str) -> None:
        news = json.dumps({"from": self._node, "kind": kind, "ip": ip, "account": account})
        self._call(PUBLISH, [AUTH_CHANNEL], [news], 0)

    def heard(self, raw: Any) -> None:
        try:
            news = json.loads(raw)
            if news["from"] != self._node and self._mirrored is not None:
                self._mirrored.heard(news["kind"], news["ip"], news["account"])
        except (ValueError, KeyError, TypeError):
            log.warn("state.backend: unreadable message on {channel} ignored", channel=AUTH_CHANNEL)

    def available(self) -> bool:
        if self._down_since is None or self._clock.seconds() - self._down_since <= self._fallback:
            return True
        if not self._refusing:
            self._refusing = True
            log.error("state.backend: Redis at {where} unreachable for more than state.fallback_time "
                      "({seconds:g} s): answering 451 4.3.0 until it is back", where=self._where, seconds=self._fallback)
        return False

    def _call(self, script: str, keys: list[str], args: list[Any], fail_open: Any) -> Deferred[Any]:
        d: Deferred[Any] = maybeDeferred(self._redis.eval, script, keys, args)
        d.addTimeout(CALL_TIMEOUT_SECONDS, self._clock)
        d.addCallbacks(self._answered, self._failed, errbackArgs=(fail_open,))
        return d

    def _answered(self, answer: Any) -> Any:
        if self._down_since is not None:
            log.info("state.backend: Redis at {where} answers again: limits shared again", where=self._where)
            self._down_since, self._refusing = None, False
        return answer.decode() if isinstance(answer, bytes) else answer

    def _failed(self, failure: Any, fail_open: Any) -> Any:
        if self._down_since is None:
            self._down_since = self._clock.seconds()
            log.warn("state.backend: Redis at {where} unreachable ({error}): limits not applied for up to "
                     "state.fallback_time ({seconds:g} s)", where=self._where,
                     error=why(failure), seconds=self._fallback)
        return fail_open


def auth_events(subscriber: type) -> type:
    """The subscription to mailgate:auth (a txredisapi SubscriberProtocol), made again on every reconnection."""

    class AuthEvents(subscriber):
        def connectionMade(self) -> Any:
            ready = super().connectionMade()
            if isinstance(ready, Deferred):
                return ready.addCallback(lambda _: self.subscribe(AUTH_CHANNEL))
            return self.subscribe(AUTH_CHANNEL)

        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            self.factory.state.heard(message)

    return AuthEvents


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def why(failure: Any) -> str:
    """A failed call, in words for the log line."""
    if failure.check(TimeoutError, CancelledError):
        return f"no answer within {CALL_TIMEOUT_SECONDS:g} s"
    return failure.getErrorMessage() or failure.type.__name__
