"""mailgate.ops.log_observer: Twisted's noise out, JSON lines that parse, twistd's destinations."""

from __future__ import annotations

import io
import json
from typing import IO, cast

from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger, globalLogPublisher
from twisted.python import log as legacy_log

from mailgate.config import LogConfig
from mailgate.ops.log_observer import GatewayLogObserver, for_twistd, is_noise, json_line
from mailgate.ops.turn_writer import TurnWriter


def captured(emit) -> list[dict]:  # type: ignore[no-untyped-def]
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        emit()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def test_twisted_noise_is_recognised() -> None:
    def noisy() -> None:
        factory = Factory()
        factory.doStart()
        factory.doStop()
        legacy_log.msg("SMTPFactory starting on 2525")
        legacy_log.msg("(TCP Port 2525 Closed)")
        legacy_log.msg("Resolver added ('127.0.0.1', 53) to server list")
        legacy_log.msg("b'/etc/resolv.conf' changed, reparsing")
    assert all(is_noise(event) for event in captured(noisy))

    def useful() -> None:
        Logger(namespace="mailgate.app.service").info("listening: mx on 2525")
        legacy_log.msg("something else happened")
        legacy_log.err(RuntimeError("starting on fire"), "x")
    assert not any(is_noise(event) for event in captured(useful))


def test_the_observer_filters_and_writes_json_or_text() -> None:
    out = io.StringIO()
    observer = GatewayLogObserver(LogConfig(format="json"), out)
    factory_events = captured(lambda: (Factory().doStart()))
    for event in factory_events:
        observer(event)
    assert out.getvalue() == ""
    logged = captured(lambda: Logger(namespace="mailgate.delivery").warn(
        "{queue_id}: to=<{to}> status={status}", event="delivery", queue_id="Q1", to="b@y.test", status="bounced",
        reply=object()))
    observer(logged[0])
    line = json.loads(out.getvalue())
    assert line["level"] == "warn" and line["event"] == "delivery" and line["queue_id"] == "Q1"
    assert line["message"] == "Q1: to=<b@y.test> status=bounced"
    assert line["time"].endswith("Z") and isinstance(line["reply"], str)
    observer.settings = LogConfig(format="text", twisted_noise=True)
    for event in factory_events:
        observer(event)
    assert "Starting factory" in out.getvalue().splitlines()[-1]


def test_a_failure_is_one_json_line_with_its_traceback() -> None:
    def fail() -> None:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            Logger(namespace="x").failure("it broke")
    [event] = captured(fail)
    text = json_line(event)
    assert text.count("\n") == 1
    parsed = json.loads(text)
    assert parsed["level"] == "critical" and "ZeroDivisionError" in parsed["traceback"]
    assert json.loads(json_line({"log_level": LogLevel.info, "log_format": "{log_text}", "log_text": "a",
                                 "log_namespace": "log_legacy", "message": ("a",), "system": "-"}))["event"] == \
        "log_legacy"


def test_twistd_options_choose_the_destination(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert for_twistd({"logger": "some.factory"}, LogConfig()) is None
    observer = for_twistd({"logfile": str(tmp_path / "m.log"), "nodaemon": True}, LogConfig(format="json"))
    assert observer is not None
    observer(captured(lambda: Logger(namespace="t").info("hello {who}", who="you"))[0])
    assert json.loads((tmp_path / "m.log").read_text())["message"] == "hello you"


class Turns(Clock):
    running = True


def test_twistds_log_file_gets_one_write_per_reactor_turn() -> None:
    """for_twistd's observer writes through a TurnWriter: the lines of a turn in one write, in order."""
    out, reactor = CountingOut(), Turns()
    observer = GatewayLogObserver(LogConfig(), cast(IO[str], TurnWriter(out, reactor)))
    log = Logger(namespace="test", observer=observer)
    log.info("first {n}", n=1)
    log.info("second")
    assert out.getvalue() == "" and out.writes == 0
    reactor.advance(0)
    assert [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == ["first 1", "second"]
    assert out.writes == 1
    reactor.running = False  # shutdown: twistd's last lines go out at once
    log.info("last")
    assert out.getvalue().endswith("] last\n") and out.writes == 2


class CountingOut(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)
