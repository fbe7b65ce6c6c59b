"""NOTIFY=SUCCESS for what the delivery transaction delivers itself: Maildirs and inline gateways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from mailgate import hookimpl
from mailgate.builtin import load_plugins
from mailgate.config import parse_config
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.inbound.transaction import Deliverer
from mailgate.outbound.spool import QueueStore
from mailgate.outbound.spooler import Spooler
from mailgate.store.maildir_writer import MaildirStore, StoredMessage

BODY = b"Subject: hi\n\nhello\n"


class InlineAccepts:
    @hookimpl
    def mailgate_deliver_inline(self, route: str) -> Any:
        return True if route == "webhook:tickets" else None


class Reports:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, list[tuple[str, Route]]]] = []
        self.error = error

    async def report_delivered(self, queue_id: str, envelope: Envelope, message: StoredMessage,
                               delivered: list[tuple[str, Route]], now: float) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((queue_id, sorted(delivered)))


def deliverer(tmp_path: Path, reports: Reports) -> Deliverer:
    config = parse_config({"listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
                           "domains": {"local": ["example.test"]}, "plugins": {"paths": [], "enable": []}})
    hooks = Hooks(load_plugins(config, [InlineAccepts()]), Clock())
    run = lambda f, *a: succeed(f(*a))  # noqa: E731 - the disk, without threads
    store = QueueStore(str(tmp_path / "queue"))
    store.prepare()
    made = Deliverer(MaildirStore(str(tmp_path / "mail"), "mx.example.test", run),
                     Spooler(store, run, lambda: 1.0), hooks, "mx.example.test")
    made.reports = reports
    return made


def deliver(made: Deliverer, parameters: dict[str, dict[str, str]]) -> Any:
    routes = {"bob@example.test": Route("local"), "new@hooks.example.test": Route("webhook:tickets"),
              "dan@remote.test": Route("mx")}
    envelope = Envelope(mail_from="poster@remote.test", rcpt_to=list(routes), routes=routes,
                        recipient_parameters=parameters)
    outcome: list[Any] = []
    message = StoredMessage.build(b"", [BODY], len(BODY), BODY.count(b"\n"))
    Deferred.fromCoroutine(made.deliver(envelope, message, "Q1")).addBoth(outcome.append)
    return outcome[0]


def test_local_and_inline_deliveries_are_reported(tmp_path: Path) -> None:
    reports = Reports()
    deliver(deliverer(tmp_path, reports), {"bob@example.test": {"NOTIFY": "SUCCESS"}})
    # all the transaction delivered itself goes to the report; which of them asked is the report's choice
    assert reports.calls == [("Q1", [("bob@example.test", Route("local")),
                                     ("new@hooks.example.test", Route("webhook:tickets"))])]


def test_no_report_without_dsn_parameters(tmp_path: Path) -> None:
    reports = Reports()
    deliver(deliverer(tmp_path, reports), {})
    assert reports.calls == []


@pytest.mark.parametrize("error", [OSError(28, "No space left on device")])
def test_a_report_that_cannot_be_queued_does_not_fail_the_delivered_message(tmp_path: Path, error: Exception) -> None:
    delivered = deliver(deliverer(tmp_path, Reports(error)), {"bob@example.test": {"NOTIFY": "SUCCESS"}})
    assert sorted(d.recipient for d in delivered) == ["bob@example.test", "new@hooks.example.test"]
