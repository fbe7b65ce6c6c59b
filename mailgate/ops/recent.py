"""The last delivery events and how many of each kind came per minute, for the status page."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

KEEP_EVENTS = 100
KEEP_MINUTES = 60


class RecentEvents:
    """The last `keep` events (the dicts mailgate_event got) and per-minute counts by type."""

    def __init__(self, seconds: Callable[[], float], keep: int = KEEP_EVENTS, minutes: int = KEEP_MINUTES) -> None:
        self._seconds = seconds
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)
        self.minutes = minutes
        self._counts: dict[int, Counter[str]] = {}  # minute number (epoch seconds // 60) -> type -> events
        self._minute = -1
        self._current: Counter[str] = Counter()

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        minute = int(self._seconds() // 60)
        if minute != self._minute:
            self._minute = minute
            self._current = self._counts[minute] = self._counts.get(minute) or Counter()
            for old in [m for m in self._counts if m <= minute - self.minutes]:
                del self._counts[old]
        self._current[str(event.get("type", ""))] += 1

    def newest_first(self) -> list[dict[str, Any]]:
        return list(reversed(self.events))

    def per_minute(self, kind: str) -> list[int]:
        """Events of `kind` in each of the last `minutes` minutes, oldest first, this minute last."""
        now = int(self._seconds() // 60)
        return [self._counts[m][kind] if m in self._counts else 0 for m in range(now - self.minutes + 1, now + 1)]
