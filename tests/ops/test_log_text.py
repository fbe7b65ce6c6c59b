"""mailgate.ops.log_text: the same text as twisted.logger's own formatting, for any event."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, strategies as st
from twisted.logger import LogLevel, formatEvent, formatEventAsClassicLogText, formatTime, timeFormatRFC3339
from twisted.python.failure import Failure

from mailgate.ops.log_text import classic_line, event_text

FORMATS = st.sampled_from([
    "{queue_id}: from=<{from}>, to=<{to}>, status={status}",
    "{value!r} and {value}", "{number:.1f} s", "{missing} key", "{method()}", "plain text",
    "two\nlines {value}", "{value.real}", "{items[0]}", "{", "unbalanced }", "",
])
VALUES = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.none())


def twisted_classic(event: dict[str, Any]) -> str | None:
    return formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, timeFormatRFC3339))


@given(form=FORMATS, value=VALUES, number=st.floats(allow_nan=False, allow_infinity=False),
       when=st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)),
       system=st.one_of(st.none(), st.text(max_size=10)), level=st.sampled_from([None, *LogLevel.iterconstants()]),
       namespace=st.one_of(st.none(), st.text(max_size=10)))
def test_the_same_text_as_twisted(form: str, value: Any, number: float, when: float | None, system: str | None,
                                  level: Any, namespace: str | None) -> None:
    event: dict[str, Any] = {"log_format": form, "value": value, "number": number, "items": [value],
                             "method": lambda: "called", "queue_id": "4F1A", "from": "a@x.test", "to": "b@y.test",
                             "status": "sent"}
    for key, field in (("log_time", when), ("log_system", system), ("log_level", level),
                       ("log_namespace", namespace)):
        if field is not None:
            event[key] = field
    assert classic_line(event) == twisted_classic(dict(event))
    assert event_text(event) == formatEvent(dict(event))


def test_a_failure_keeps_its_traceback() -> None:
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    event = {"log_format": "it broke: {why}", "why": "division", "log_failure": failure, "log_time": time.time(),
             "log_level": LogLevel.error, "log_namespace": "test"}
    line = classic_line(event)
    assert line == twisted_classic(dict(event))
    assert line is not None and "ZeroDivisionError" in line


def test_no_format_is_no_line() -> None:
    assert classic_line({"log_time": time.time(), "other": 1}) is None
    assert classic_line({"log_format": "", "log_time": time.time()}) is None
