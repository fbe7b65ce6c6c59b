"""The operator's view of delivery events: a plugin on `mailgate_event` that logs, counts and remembers them.

Registered by the gateway with the built-ins, one object for the whole
process (a reload keeps it): its counters and recent events go on.
"""

from __future__ import annotations

from typing import Any

from mailgate import hookimpl
from mailgate.ops import delivery_log
from mailgate.ops.metrics import Metrics
from mailgate.ops.recent import RecentEvents


class OperationsPlugin:
    """Each event: its log line (always); counted and kept for the status page when metrics are on."""

    def __init__(self, metrics: Metrics | None = None, recent: RecentEvents | None = None) -> None:
        self.metrics = metrics
        self.recent = recent

    @hookimpl
    def mailgate_event(self, event: dict[str, Any]) -> None:
        delivery_log.tell(event)
        if self.metrics is not None:
            self.metrics.count_event(event)
        if self.recent is not None:
            self.recent.add(event)
