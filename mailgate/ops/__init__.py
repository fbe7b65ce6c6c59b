"""Operations: metrics, the status page, the log's delivery lines and its observer (0.2).

`Operations` is what one gateway process has of them; mailgate.app wires
it (docs/operations.md says what the operator sees).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailgate.config import GatewayConfig
from mailgate.core.meters import NO_METERS, Meters
from mailgate.ops.log_observer import GatewayLogObserver, for_twistd
from mailgate.ops.metrics import Metrics
from mailgate.ops.plugin import OperationsPlugin
from mailgate.ops.queue_view import QueueView
from mailgate.ops.recent import RecentEvents


class Operations:
    """The events' plugin, and with `metrics.endpoint` set the metrics and the recent events; the log observer.

    One object for the process: a reload changes its log settings, and its
    counts go on.
    """

    def __init__(self, config: GatewayConfig, seconds: Callable[[], float]) -> None:
        metrics_on = bool(config.metrics.endpoint)
        self.metrics = Metrics(config.metrics.destinations) if metrics_on else None
        self.recent = RecentEvents(seconds) if metrics_on else None
        self.plugin = OperationsPlugin(self.metrics, self.recent)
        self.log_observer: GatewayLogObserver | None = None
        self.queue_view: QueueView | None = None  # with workers, in worker 0: every part (mailgate.app.operations)
        self._log_settings = config.log

    @property
    def meters(self) -> Meters:
        return self.metrics if self.metrics is not None else NO_METERS

    def observer_for_twistd(self, options: Any) -> GatewayLogObserver | None:
        """The log observer for twistd's options (None when `--logger` chose another)."""
        self.log_observer = for_twistd(options, self._log_settings)
        return self.log_observer

    def reconfigure(self, config: GatewayConfig) -> None:
        """A reload: the `[log]` settings apply to the next line."""
        self._log_settings = config.log
        if self.log_observer is not None:
            self.log_observer.settings = config.log
