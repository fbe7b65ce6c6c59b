"""mailgate.ops.delivery_log: one Postfix-style line per recipient and outcome."""

from __future__ import annotations

import pytest

from mailgate.ops import delivery_log
from tests.support.logs import LogLines, pytest_log_lines


@pytest.fixture
def log(request: pytest.FixtureRequest) -> LogLines:
    return pytest_log_lines(request)


def test_outcomes(log: LogLines) -> None:
    base = {"queue_id": "Q1", "mail_from": "a@x.test", "recipient": "b@y.test", "route": "mx", "attempt": 2}
    delivery_log.tell({**base, "type": "delivered", "reply": "250 2.0.0 Ok", "relay": "mx1.y.test", "delay": 12.34})
    delivery_log.tell({**base, "type": "deferred", "reply": "451 4.2.1 busy", "relay": "", "delay": 345.6})
    delivery_log.tell({**base, "type": "expired", "reply": "", "delay": None})
    delivery_log.tell({**base, "type": "refused", "reply": "554 5.7.1 no"})  # the session logs those
    assert log.lines == [
        "Q1: from=<a@x.test>, to=<b@y.test>, relay=mx1.y.test, delay=12.3, attempt=2, status=sent (250 2.0.0 Ok)",
        "Q1: from=<a@x.test>, to=<b@y.test>, relay=mx, delay=346, attempt=2, status=deferred (451 4.2.1 busy)",
        "Q1: from=<a@x.test>, to=<b@y.test>, relay=mx, delay=?, attempt=2, status=expired ()",
    ]
    fields = log.named("delivery")[0]
    assert (fields["queue_id"], fields["from"], fields["to"], fields["status"]) == ("Q1", "a@x.test", "b@y.test",
                                                                                     "sent")
    assert fields["log_namespace"] == "mailgate.delivery"


def test_received(log: LogLines) -> None:
    delivery_log.tell({"type": "received", "queue_id": "Q1", "mail_from": "", "recipient": "b@y.test",
                       "route": "local", "client": "192.0.2.7", "listener": "mx", "size": 321})
    assert log.lines == ["Q1: from=<>, to=<b@y.test>, client=[192.0.2.7], listener=mx, route=local, size=321, "
                         "status=received"]
