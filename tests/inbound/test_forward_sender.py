"""mailgate_forward_sender in the delivery transaction: forwarded copies leave as entries of their own (SRS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mailgate import hookimpl
from mailgate.builtin import load_plugins
from mailgate.config import parse_config
from mailgate.core.errors import TemporaryFailure
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.inbound.routing import accept_recipient
from mailgate.inbound.transaction import Deliverer
from mailgate.mailauth.srs import SenderRewriting
from mailgate.store.maildir_writer import StoredMessage
from mailgate.testing.memory import MemoryStore

SECRET = "a secret of more than sixteen characters"
SETTINGS = {
    "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
    "server": {"hostname": "mx.example.test"},
    "domains": {"local": ["example.test"]},
    "forward": [{"match": "fwd@example.test", "to": ["carol@remote.test", "dave@remote.test", "hook@example.test"]}],
    "relay": {"transport": {"example.test": "local"}},
    "srs": {"secret": SECRET},
    "plugins": {"paths": [], "enable": []},
}


def done(coroutine: Any) -> Any:
    outcome: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    return outcome[0]


def transaction(tmp_path: Path, *recipients: str, extra: tuple[object, ...] = ()) -> MemoryStore:
    config = parse_config(SETTINGS)
    hooks = Hooks(load_plugins(config, extra), Clock())
    done(hooks.each("mailgate_configure", config=config, reactor=Clock()))
    envelope = Envelope(mail_from="bob@remote.test", may_relay=True)  # erin@remote.test is relayed
    for recipient in recipients:
        assert done(accept_recipient(hooks, envelope, recipient)).code == 250
    memory = MemoryStore()
    body = b"Subject: hi\n\nhello\n"
    message = StoredMessage.build(b"", [body], len(body), body.count(b"\n"))
    result = done(Deliverer(memory, memory, hooks, "mx.example.test").deliver(envelope, message, "Q1"))
    if isinstance(result, Exception) or hasattr(result, "raiseException"):
        result.raiseException()
    return memory


def test_forwarded_remote_copies_get_the_srs_sender_in_an_entry_of_their_own(tmp_path: Path) -> None:
    memory = transaction(tmp_path, "fwd@example.test", "erin@remote.test")
    entries = {queue_id: (envelope.mail_from, [r for r, _ in recipients])
               for queue_id, envelope, recipients, _ in memory.entries}
    assert entries["Q1"] == ("bob@remote.test", ["erin@remote.test"])  # named at RCPT: keeps its sender
    sender, rerouted = entries["Q1F0"]
    assert rerouted == ["carol@remote.test", "dave@remote.test"]
    assert SenderRewriting(SECRET, "mx.example.test", now=lambda: 0.0).reverse(sender) == "bob@remote.test"  # a Clock
    assert [addresses for addresses, _ in memory.copies] == [["hook@example.test"]]  # local: no rewrite


def test_a_plugins_answer_that_is_no_address_fails_the_transaction(tmp_path: Path) -> None:
    class Broken:
        @hookimpl
        def mailgate_forward_sender(self) -> str:
            return "not an address"

    try:
        transaction(tmp_path, "fwd@example.test", extra=(Broken(),))
    except TemporaryFailure as failure:
        assert failure.reply.code == 451
    else:
        raise AssertionError("accepted")


def test_no_srs_secret_no_rewriting(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(SETTINGS, "srs", {})
    memory = transaction(tmp_path, "fwd@example.test")
    assert [(queue_id, envelope.mail_from) for queue_id, envelope, _, _ in memory.entries] == [("Q1", "bob@remote.test")]
