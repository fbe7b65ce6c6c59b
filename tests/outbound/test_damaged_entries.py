"""Damaged queue entries: recognised, set aside in corrupt/ with one log line, never retried or relayed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from twisted.logger import capturedLogs, formatEvent

from mailgate.outbound import control
from mailgate.outbound.spool import DamagedEntry, QueuedMessage, QueueStore, RecipientState
from mailgate.store.maildir_writer import StoredMessage
from tests.outbound.test_scheduler import Harness

GOOD = {"id": "Q1", "sender": "a@x.test", "arrived": 1000.0,
        "recipients": [{"address": "b@y.test", "route": "mx", "status": "pending"}]}


def stored(body: bytes = b"Subject: s\n\nhello\n") -> StoredMessage:
    return StoredMessage.build(b"Received: by mx id Q1;\n", [body], len(body), body.count(b"\n"))


def spool(tmp_path: Path) -> QueueStore:
    store = QueueStore(str(tmp_path / "queue"))
    store.prepare()
    return store


def queued(store: QueueStore, queue_id: str = "Q1") -> QueuedMessage:
    entry = QueuedMessage(id=queue_id, sender="a@x.test", arrived=1000.0,
                          recipients=[RecipientState("b@y.test", "mx")])
    store.add(entry, stored())
    return entry


@pytest.mark.parametrize(("content", "reason"), [
    (json.dumps(GOOD).encode()[:40], "envelope file is not JSON"),
    (b"", "envelope file is empty"),
    (b"{}", "envelope lacks 'id'"),
    (bytes(range(128, 256)), "envelope file is not JSON"),
    (b"[1, 2]", "envelope is not a JSON object"),
    (json.dumps({**GOOD, "arrived": "yesterday"}).encode(), "envelope field 'arrived' is a str"),
    (json.dumps({**GOOD, "id": "Q2"}).encode(), "envelope names another id"),
    (json.dumps({**GOOD, "recipients": []}).encode(), "envelope has no recipients"),
    (json.dumps({**GOOD, "recipients": ["b@y.test"]}).encode(), "recipient is not a JSON object"),
    (json.dumps({**GOOD, "recipients": [{"address": "b@y.test"}]}).encode(), "recipient lacks 'route'"),
    (json.dumps({**GOOD, "recipients": [{"address": "b@y.test", "route": "nonsense"}]}).encode(),
     "recipient route: not a route"),
    (json.dumps({**GOOD, "recipients": [{**GOOD["recipients"][0], "status": "lost"}]}).encode(),
     "recipient status 'lost'"),
])
def test_an_envelope_that_does_not_fit_is_damaged(tmp_path: Path, content: bytes, reason: str) -> None:
    store = spool(tmp_path)
    (tmp_path / "queue" / "env" / "Q1").write_bytes(content)
    with pytest.raises(DamagedEntry, match=reason):
        store.load("Q1")
    assert list(store.entries()) == []  # skipped, not raised


def test_old_and_newer_envelopes_still_load(tmp_path: Path) -> None:
    """0.1 wrote no session, parameters or fingerprint; a newer version may add fields."""
    store = spool(tmp_path)
    (tmp_path / "queue" / "env" / "Q1").write_bytes(json.dumps({**GOOD, "from_the_future": 1}).encode())
    (tmp_path / "queue" / "msg" / "Q1").write_bytes(b"Subject: old\n\nqueued by 0.1\n")
    entry = store.load_checked("Q1")
    assert entry is not None and (entry.message_size, entry.session) == (None, {})


def test_the_message_is_checked_against_its_length_and_checksum(tmp_path: Path) -> None:
    store = spool(tmp_path)
    queued(store)
    path = Path(store.message_path("Q1"))
    original = path.read_bytes()
    assert store.load_checked("Q1") is not None
    path.write_bytes(original[:-3])
    with pytest.raises(DamagedEntry, match=f"message file has {len(original) - 3} bytes, {len(original)} were"):
        store.load_checked("Q1")
    path.write_bytes(original.replace(b"hello", b"HELLO"))
    with pytest.raises(DamagedEntry, match="does not match its SHA-256 checksum"):
        store.load_checked("Q1")
    path.unlink()
    with pytest.raises(DamagedEntry, match="message file missing"):
        store.load_checked("Q1")


def test_set_aside_keeps_the_files_and_the_reason_and_delete_removes_them(tmp_path: Path) -> None:
    store = spool(tmp_path)
    queued(store)
    assert store.set_aside("Q1", "message file has 3 bytes, 42 were queued")
    assert store.ids() == [] and not Path(store.message_path("Q1")).exists()
    assert sorted(os.listdir(tmp_path / "queue" / "corrupt")) == ["Q1.env", "Q1.msg", "Q1.reason"]
    aside = store.corrupt.read("Q1")
    assert aside.reason == "message file has 3 bytes, 42 were queued"
    assert aside.envelope is not None and json.loads(aside.envelope)["id"] == "Q1"
    assert store.remove("Q1") is True  # `queue delete ID`, with or without a server
    assert os.listdir(tmp_path / "queue" / "corrupt") == []
    assert store.remove("Q1") is False


def test_set_aside_of_an_entry_deleted_meanwhile_leaves_nothing(tmp_path: Path) -> None:
    store = spool(tmp_path)
    assert store.set_aside("GONE", "message file missing") is False
    assert store.corrupt.ids() == []


def test_a_set_aside_interrupted_by_a_crash_is_finished_at_start_keeping_its_reason(tmp_path: Path) -> None:
    store = spool(tmp_path)
    queued(store)
    os.makedirs(tmp_path / "queue" / "corrupt")
    (tmp_path / "queue" / "corrupt" / "Q1.reason").write_bytes(b"message file does not match\n")
    os.rename(store.message_path("Q1"), tmp_path / "queue" / "corrupt" / "Q1.msg")  # the crash came here
    assert store.prepare() == [("Q1", "message file missing")]
    assert store.corrupt.read("Q1").reason == "message file does not match"
    assert sorted(os.listdir(tmp_path / "queue" / "corrupt")) == ["Q1.env", "Q1.msg", "Q1.reason"]


# --- in the scheduler ---------------------------------------------------------------


def deferred_entry(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    harness.relay.codes["b@remote.test"] = [451]
    harness.submit([("b@remote.test", "mx")])
    assert len(harness.relay.calls) == 1
    return harness


def attempts_after_damage(harness: Harness) -> list[str]:
    """Let an hour of retries pass; the log lines, none of them a traceback."""
    with capturedLogs() as events:
        for _ in range(60):
            harness.clock.advance(60)
    assert [event for event in events if "log_failure" in event] == []
    return [formatEvent(event) for event in events]


@pytest.mark.parametrize("damage", [b"", b"{}", b'{"id": "Q1", "sender"', bytes(range(128, 256))])
def test_a_damaged_envelope_is_set_aside_once_with_one_line(tmp_path: Path, damage: bytes) -> None:
    harness = deferred_entry(tmp_path)
    (tmp_path / "queue" / "env" / "Q1").write_bytes(damage)
    lines = attempts_after_damage(harness)
    assert [line for line in lines if "Q1" in line] == [
        line for line in lines if line.startswith("queue: Q1: damaged entry set aside in corrupt/: envelope")]
    assert len(lines) == 1
    assert len(harness.relay.calls) == 1
    assert harness.store.ids() == [] and harness.store.corrupt.ids() == ["Q1"]


def test_a_truncated_message_is_never_relayed(tmp_path: Path) -> None:
    harness = deferred_entry(tmp_path)
    path = Path(harness.store.message_path("Q1"))
    path.write_bytes(path.read_bytes()[:-10])
    lines = attempts_after_damage(harness)
    assert len(lines) == 1 and "message file has" in lines[0]
    assert len(harness.relay.calls) == 1  # only the attempt before the damage
    assert harness.store.corrupt.ids() == ["Q1"]


def test_a_message_lost_before_a_restart_is_set_aside_at_start(tmp_path: Path) -> None:
    harness = deferred_entry(tmp_path)
    os.unlink(harness.store.message_path("Q1"))
    with capturedLogs() as events:
        harness.queue = harness.new_queue()
    lines = [formatEvent(event) for event in events]
    assert lines == ["queue: Q1: damaged entry set aside in corrupt/: message file missing"]
    assert harness.store.corrupt.ids() == ["Q1"]


def test_a_delete_request_removes_a_set_aside_entry(tmp_path: Path) -> None:
    harness = deferred_entry(tmp_path)
    (tmp_path / "queue" / "env" / "Q1").write_bytes(b"{}")
    attempts_after_damage(harness)
    request = harness.store.request("delete", "Q1")
    control.serve_requests(harness.queue)
    assert not Path(request).exists()
    assert harness.store.corrupt.ids() == []
