"""The log lines a test caused, as text: what an operator would read."""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent, globalLogPublisher


class LogLines:
    """Collects every log event from now until the test ends, formatted."""

    def __init__(self, testcase: Any) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]
