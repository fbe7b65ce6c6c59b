"""The delivery transaction over a real Maildir store and a real spool: all sinks or none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from mailgate import hookimpl
from mailgate.builtin import load_plugins
from mailgate.config import parse_config
from mailgate.core.errors import DeliveryError, TemporaryFailure
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.inbound.transaction import Deliverer
from mailgate.outbound.spool import QueueStore
from mailgate.outbound.spooler import Spooler
from mailgate.store.maildir_writer import MaildirStore, StoredMessage

BODY = b"Subject: hi team\n\nhello\n"
HEADER = b"Return-Path: <poster@remote.test>\nReceived: from x by mx id Q1;\n\tdate\n"


class InlineRefusal:
    """What a sync webhook answering 500 does: mailgate_deliver_inline raises 451 4.4.1.
    Alice and Bob have mailboxes (as users of the users file would)."""

    @hookimpl
    def mailgate_route(self, recipient: str) -> Any:
        if recipient in ("alice@example.test", "bob@example.test"):
            return "local"
        return "webhook:tickets" if recipient == "new@hooks.example.test" else None

    @hookimpl
    def mailgate_deliver_inline(self, route: str) -> Any:
        if route == "webhook:tickets":
            raise TemporaryFailure("Webhook unavailable (HTTP 500), try again later", code=451, enhanced="4.4.1")
        return None


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        config = parse_config({
            "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
            "domains": {"local": ["example.test"]},
            "lists": {"team@example.test": {"members": ["alice@example.test", "carol@remote.test"]}},
            "plugins": {"paths": [], "enable": []},
        })
        manager = load_plugins(config, [InlineRefusal()])
        self.hooks = Hooks(manager, Clock())
        Deferred.fromCoroutine(self.hooks.each("mailgate_configure", config=config, reactor=Clock()))
        run = lambda f, *a: succeed(f(*a))  # noqa: E731 - the disk, without threads
        self.root = tmp_path
        self.mailboxes = MaildirStore(str(tmp_path / "mail"), "mx.example.test", run)
        self.store = QueueStore(str(tmp_path / "queue"))
        self.store.prepare()
        self.released: list[str] = []
        spooler = Spooler(self.store, run, lambda: 1_000_000.0)
        spooler.on_release(lambda entry: self.released.append(entry.id))
        self.deliverer = Deliverer(self.mailboxes, spooler, self.hooks, "mx.example.test")

    def deliver(self, routes: dict[str, str]) -> Any:
        envelope = Envelope(mail_from="poster@remote.test", rcpt_to=list(routes),
                            routes={r: Route(route) for r, route in routes.items()})
        message = StoredMessage.build(HEADER, [BODY], len(BODY), BODY.count(b"\n"))
        outcome: list[Any] = []
        Deferred.fromCoroutine(self.deliverer.deliver(envelope, message, "Q1")).addBoth(outcome.append)
        return outcome[0]

    def local_copies(self) -> list[str]:
        found = []
        for directory, _, files in os.walk(self.root / "mail"):
            if os.path.basename(directory) == "new":
                found += files
        return found


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_everything_is_stored_and_released_together(setup: Setup) -> None:
    delivered = setup.deliver({"team@example.test": "list:team@example.test", "bob@example.test": "local",
                               "dan@remote.test": "mx"})
    assert sorted((d.queue_id, d.recipient) for d in delivered) == [("Q1", "bob@example.test"),
                                                                    ("Q1L0", "alice@example.test")]
    assert len(setup.local_copies()) == 2  # alice's list copy, bob's own
    assert sorted(setup.store.ids()) == ["Q1", "Q1L0"] and sorted(setup.released) == ["Q1", "Q1L0"]


def test_a_failing_inline_gateway_leaves_no_copy_anywhere(setup: Setup) -> None:
    failure = setup.deliver({"team@example.test": "list:team@example.test", "new@hooks.example.test": "webhook:tickets"})
    assert isinstance(failure.value, DeliveryError) and str(failure.value.reply).startswith("451 4.4.1")
    assert setup.local_copies() == [] and setup.store.ids() == [] and setup.released == []


def test_a_store_failure_takes_the_queue_entries_back(setup: Setup) -> None:
    (setup.root / "mail" / "example.test").mkdir(parents=True)
    (setup.root / "mail" / "example.test" / "bob").write_text("not a maildir")  # the original's copy fails
    failure = setup.deliver({"team@example.test": "list:team@example.test", "bob@example.test": "local",
                             "dan@remote.test": "mx"})
    assert isinstance(failure.value, DeliveryError) and failure.value.code == 451
    assert setup.local_copies() == []  # alice's list copy went with bob's
    assert setup.store.ids() == [] and setup.released == []  # carol's and dan's entries removed again
