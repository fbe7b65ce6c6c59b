"""Rate limits: token buckets per key (sender, client IP), on an injected clock."""

from __future__ import annotations

from typing import Any

from mailgate.config import SenderRate


class RateLimiter:
    """`rate.messages` per `rate.per_seconds` for each key, refilled continuously.

    Buckets that are full again are forgotten, so memory follows the keys
    active within one period, not every key ever seen.
    """

    def __init__(self, rate: SenderRate | None, clock: Any, max_keys: int = 100_000) -> None:
        self._rate = rate
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Spend one token for `key`: 0.0 if allowed, else seconds until one is free."""
        if self._rate is None:
            return 0.0
        capacity, per_second = float(self._rate.messages), self._rate.messages / self._rate.per_seconds
        now = self._clock.seconds()
        tokens, at = self._buckets.pop(key, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / per_second
        self._buckets[key] = (tokens - 1.0, now)
        self._forget_full(capacity, per_second, now)
        return 0.0

    def _forget_full(self, capacity: float, per_second: float, now: float) -> None:
        """Drop the oldest buckets (dict order = least recently used) once
        they have refilled, or when there are too many."""
        for key in list(self._buckets)[:8]:
            tokens, at = self._buckets[key]
            if len(self._buckets) > self._max_keys or tokens + (now - at) * per_second >= capacity:
                del self._buckets[key]
