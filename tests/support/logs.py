"""The log lines a test caused, as text: what an operator would read."""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent, globalLogPublisher


class LogLines:
    """Collects every log event from now until the test ends, formatted."""

    def __init__(self, testcase: Any) -> None:
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []  # as logged, for their fields
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event))
        self.events.append(event)

    def named(self, name: str) -> list[dict[str, Any]]:
        """The events logged with `event=name` (mailgate's structured lines: "delivery", "smtp.reject", ...)."""
        return [event for event in self.events if event.get("event") == name]

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


class _PytestCleanup:
    def __init__(self, request: Any) -> None:
        self._request = request

    def addCleanup(self, function: Any, *args: Any) -> None:
        self._request.addfinalizer(lambda: function(*args))


def pytest_log_lines(request: Any) -> LogLines:
    """LogLines for a pytest test (its `request` fixture)."""
    return LogLines(_PytestCleanup(request))
