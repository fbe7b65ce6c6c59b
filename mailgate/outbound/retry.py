"""RetryPolicy: how long to wait before the next attempt, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from mailgate.config import RelayConfig


@dataclass(frozen=True)
class RetryPolicy:
    intervals_seconds: tuple[float, ...]  # from relay.retry_intervals; the last one repeats
    max_queue_seconds: float  # from relay.max_queue_time

    @classmethod
    def from_config(cls, relay: RelayConfig) -> "RetryPolicy":
        return cls(tuple(relay.retry_intervals_seconds), relay.max_queue_seconds)

    def delay(self, attempts: int, jitter: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `attempts` failed attempts (1 = after the first).

        Up to 10% is added at random, so messages deferred together (after a
        restart, or an outage at one destination) do not retry in lockstep.
        """
        index = min(max(attempts - 1, 0), len(self.intervals_seconds) - 1)
        return self.intervals_seconds[index] * (1.0 + 0.1 * jitter())

    def expired(self, arrived: float, now: float) -> bool:
        """True once a message has waited longer than relay.max_queue_time."""
        return now - arrived >= self.max_queue_seconds
