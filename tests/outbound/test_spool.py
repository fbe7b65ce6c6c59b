"""The spool on disk: durable add, atomic state changes, crash leftovers, CLI requests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mailgate.store.maildir_writer import StoredMessage
from mailgate.outbound.spool import DELIVERED, PENDING, QueuedMessage, QueueStore, RecipientState
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound.smtp_client import wire_size

HEADER = b"Return-Path: <a@x.test>\nReceived: by mx (mailgate) id Q1;\n\tMon, 1 Jan 2026 00:00:00 +0000\n"


def message(body: bytes = b"Subject: s\n\nhello\n") -> StoredMessage:
    return StoredMessage.build(HEADER, [body], len(body), body.count(b"\n"))


def entry(queue_id: str = "Q1") -> QueuedMessage:
    return QueuedMessage(
        id=queue_id, sender="a@x.test", arrived=1000.0,
        recipients=[RecipientState("b@y.test", "mx"), RecipientState("c@z.test", "smtp:127.0.0.1:2526")],
    )


def store(tmp_path: Path) -> QueueStore:
    s = QueueStore(str(tmp_path / "queue"))
    s.prepare()
    return s


def test_add_writes_message_without_return_path_and_state(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.add(entry(), message())
    data = Path(s.message_path("Q1")).read_bytes()
    assert data.startswith(b"Received: by mx")
    assert data.endswith(b"\nSubject: s\n\nhello\n")
    loaded = s.load("Q1")
    assert (loaded.message_size, loaded.message_sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert loaded.wire_size == wire_size(s.message_path("Q1")) == len(data.replace(b"\n", b"\r\n"))
    loaded.message_size = loaded.message_sha256 = loaded.message_lines = None
    assert loaded == entry()
    assert loaded.wire_size is None  # as in an entry queued by 0.1: SIZE= then reads the file
    assert os.listdir(tmp_path / "queue" / "tmp") == []


def test_save_replaces_state_atomically(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.add(entry(), message())
    changed = s.load("Q1")
    changed.recipients[0].status, changed.attempts, changed.last_error = DELIVERED, 1, "451 4.3.0 later"
    s.save(changed)
    again = s.load("Q1")
    assert [r.status for r in again.recipients] == [DELIVERED, PENDING]
    assert (again.attempts, again.last_error) == (1, "451 4.3.0 later")
    assert [r.address for r in again.pending()] == ["c@z.test"]


def test_remove_and_load_of_missing(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.add(entry(), message())
    assert s.remove("Q1") is True
    assert s.load("Q1") is None
    assert not Path(s.message_path("Q1")).exists()
    assert s.remove("Q1") is False


def test_prepare_clears_crash_leftovers_but_keeps_queued(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.add(entry("KEEP"), message())
    (tmp_path / "queue" / "tmp" / "half.msg").write_bytes(b"partial")
    (tmp_path / "queue" / "msg" / "ORPHAN").write_bytes(b"never acknowledged")
    s.prepare()
    assert os.listdir(tmp_path / "queue" / "tmp") == []
    assert sorted(os.listdir(tmp_path / "queue" / "msg")) == ["KEEP"]
    assert [e.id for e in s.entries()] == ["KEEP"]


def test_missing_spool_is_empty(tmp_path: Path) -> None:
    assert list(QueueStore(str(tmp_path / "nothing")).entries()) == []


def test_lock_is_exclusive_between_stores(tmp_path: Path) -> None:
    first, second = store(tmp_path), QueueStore(str(tmp_path / "queue"))
    assert first.lock()
    try:
        assert not second.lock()
    finally:
        first.unlock()
    assert second.lock()
    second.unlock()


def test_requests_are_listed_oldest_first(tmp_path: Path) -> None:
    s = store(tmp_path)
    first = s.request("flush")
    second = s.request("delete", "Q9")
    assert [(p, a, i) for p, a, i in s.requests()] == [(first, "flush", ""), (second, "delete", "Q9")]


def test_retry_policy_intervals_and_last_repeats() -> None:
    policy = RetryPolicy((60.0, 300.0), 3600.0)
    no_jitter = lambda: 0.0  # noqa: E731
    assert [policy.delay(n, no_jitter) for n in (1, 2, 3, 9)] == [60.0, 300.0, 300.0, 300.0]
    assert policy.delay(1, lambda: 1.0) == 66.0
    assert not policy.expired(1000.0, 4599.0)
    assert policy.expired(1000.0, 4600.0)


def test_failed_write_leaves_no_tmp_and_the_next_save_works(tmp_path: Path, monkeypatch) -> None:
    import mailgate.outbound.spool as queue_module

    s = store(tmp_path)
    s.add(entry(), message())
    real = queue_module.write_durably

    def full_disk(path, chunks, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(queue_module, "write_durably", full_disk)
    changed = s.load("Q1")
    changed.attempts = 5
    with pytest.raises(OSError):
        s.save(changed)
    assert os.listdir(tmp_path / "queue" / "tmp") == []
    monkeypatch.setattr(queue_module, "write_durably", real)
    s.save(changed)
    assert s.load("Q1").attempts == 5


def test_prepare_sets_aside_an_entry_whose_message_is_missing(tmp_path: Path) -> None:
    """The message goes into msg/ before the envelope into env/, and leaves it after:
    an envelope alone is damage, kept for the operator in corrupt/, not deleted."""
    s = store(tmp_path)
    s.add(entry("LOST"), message())
    os.unlink(s.message_path("LOST"))
    assert s.prepare() == [("LOST", "message file missing")]
    assert s.ids() == []
    assert sorted(os.listdir(tmp_path / "queue" / "corrupt")) == ["LOST.env", "LOST.reason"]
    assert s.corrupt.read("LOST").reason == "message file missing"


def test_a_batch_shares_syncs_and_isolates_a_failing_job(tmp_path: Path, monkeypatch) -> None:
    import mailgate.outbound.spool as queue_module

    s = store(tmp_path)
    syncs: list[list[str]] = []
    real = queue_module.sync_paths
    monkeypatch.setattr(queue_module, "sync_paths", lambda paths: (syncs.append(sorted(paths)), real(paths)))
    (tmp_path / "queue" / "env" / "BAD").mkdir()  # renaming onto a directory fails
    results = s.add_batch([[(entry("Q1"), message())], [(entry("BAD"), message())], [(entry("Q3"), message())]])
    assert results[0] is None and results[2] is None and isinstance(results[1], OSError)
    assert len(syncs) == 2  # one for the data, one for the names
    assert s.load("Q1").id == "Q1" and s.load("Q3").id == "Q3"
    assert not Path(s.message_path("BAD")).exists()  # its half-done rename was undone
    assert os.listdir(tmp_path / "queue" / "tmp") == []


def test_a_transactions_entries_land_together_or_not_at_all(tmp_path: Path) -> None:
    """A list copy and the original queued in one job: the failing one takes the other with it."""
    s = store(tmp_path)
    (tmp_path / "queue" / "env" / "BAD").mkdir()
    results = s.add_batch([[(entry("COPY"), message()), (entry("BAD"), message())], [(entry("OTHER"), message())]])
    assert isinstance(results[0], OSError) and results[1] is None
    assert s.load("COPY") is None and not Path(s.message_path("COPY")).exists()
    assert s.load("OTHER").id == "OTHER"
    assert os.listdir(tmp_path / "queue" / "tmp") == []


def test_an_entry_keeps_its_session_and_parameters(tmp_path: Path) -> None:
    """What later hooks need of the sending session survives a restart."""
    s = store(tmp_path)
    queued = entry("S1")
    queued.session = {"peer": "192.0.2.1", "helo": "client.test", "user": "alice@example.test",
                      "tls": True, "listener": "submission"}
    queued.parameters = {"BODY": "8BITMIME"}
    s.add(queued, message())
    loaded = s.load("S1")
    assert (loaded.session, loaded.parameters) == (queued.session, queued.parameters)
