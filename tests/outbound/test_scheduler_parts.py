"""Scheduler.share and prepare_spool: with workers, each scheduler attempts its own part of the spool (#18)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred

from mailgate.core import queue_ids
from mailgate.core.queue_ids import claim_part, part_of, transaction_id
from mailgate.outbound.spool import QueueStore
from tests.outbound.test_scheduler import Harness

IDS = [f"Q{n}" for n in range(40)]


def prepared(tmp_path: Path) -> Path:
    """The spool as the master leaves it before the workers start: a worker never prepares it."""
    QueueStore(str(tmp_path / "queue")).prepare()
    return tmp_path


def test_an_entry_of_another_part_is_forwarded_and_never_attempted_here(tmp_path: Path) -> None:
    forwarded: list[str] = []
    harness = Harness(prepared(tmp_path), part=(0, 2, forwarded.append))
    theirs = next(queue_id for queue_id in IDS if part_of(queue_id, 2) == 1)
    harness.submit([("b@remote.test", "mx")], queue_id=theirs)
    harness.clock.advance(3600)
    assert forwarded == [theirs]
    assert harness.relay.calls == []
    assert harness.store.load(theirs) is not None  # on disk, for the worker whose part it is


def test_an_entry_of_its_own_part_is_attempted_here(tmp_path: Path) -> None:
    forwarded: list[str] = []
    harness = Harness(prepared(tmp_path), part=(1, 2, forwarded.append))
    ours = next(queue_id for queue_id in IDS if part_of(queue_id, 2) == 1)
    harness.submit([("b@remote.test", "mx")], queue_id=ours)
    assert forwarded == []
    assert [call[3] for call in harness.relay.calls] == [["b@remote.test"]]
    assert harness.store.load(ours) is None


def test_two_parts_resume_the_spool_between_them_each_entry_once(tmp_path: Path) -> None:
    """What one process left deferred, two workers started on it attempt: every entry once."""
    left = Harness(tmp_path)
    for queue_id in IDS:
        left.relay.codes["b@remote.test"] = [451] * len(IDS)
        left.submit([("b@remote.test", "mx")], queue_id=queue_id)
    assert all(left.store.load(queue_id) is not None for queue_id in IDS)
    workers = [Harness(tmp_path, part=(index, 2, lambda queue_id: None)) for index in (0, 1)]
    for worker in workers:
        worker.clock.advance(3600)
    tried = [len(worker.relay.calls) for worker in workers]
    assert all(tried) and sum(tried) == len(IDS)  # both parts had entries, and every entry went once
    assert all(left.store.load(queue_id) is None for queue_id in IDS)


def test_ids_made_after_claiming_a_part_are_in_it() -> None:
    saved = queue_ids._part
    try:
        claim_part(2, 3)
        made = [transaction_id() for _ in range(300)]
    finally:
        queue_ids._part = saved
    assert len(set(made)) == len(made)
    assert {part_of(queue_id, 3) for queue_id in made} == {2}
    assert {part_of(transaction_id(), 3) for _ in range(300)} == {0, 1, 2}  # a single process: every part


def test_without_prepare_spool_a_restart_leaves_other_writers_files(tmp_path: Path) -> None:
    """A worker started again must not clear tmp/ (or msg/ without env/): others are writing them."""
    harness = Harness(tmp_path)
    in_flight = tmp_path / "queue" / "tmp" / "Q9.msg"
    in_flight.write_bytes(b"being written by another worker")
    scheduler = harness.new_queue()
    assert not in_flight.exists()  # the default start clears it, as after a crash
    in_flight.write_bytes(b"again")
    scheduler.prepare_spool = False
    Deferred.fromCoroutine(scheduler.start())
    assert in_flight.exists()
