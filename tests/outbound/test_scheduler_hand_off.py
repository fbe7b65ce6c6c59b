"""Scheduler.hand_off and prepare_spool: the scheduler of a worker that does not run the queue (#18)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred

from tests.outbound.test_scheduler import Harness


def test_a_handed_off_entry_is_forwarded_and_never_attempted_here(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    forwarded: list[str] = []
    harness.queue.hand_off(forwarded.append)
    harness.submit([("b@remote.test", "mx")])
    harness.clock.advance(3600)
    assert forwarded == ["Q1"]
    assert harness.relay.calls == []
    assert harness.store.load("Q1") is not None  # on disk, for the process that runs the queue


def test_the_queue_owner_attempts_what_it_is_handed(tmp_path: Path) -> None:
    spooling, owner = Harness(tmp_path), None
    spooling.queue.hand_off(lambda queue_id: owner.queue.schedule(queue_id, owner.clock.seconds()))  # type: ignore[union-attr]
    owner = Harness(tmp_path)
    spooling.submit([("b@remote.test", "mx")])
    owner.clock.advance(0)
    assert [call[3] for call in owner.relay.calls] == [["b@remote.test"]]
    assert owner.store.load("Q1") is None


def test_without_prepare_spool_a_restart_leaves_other_writers_files(tmp_path: Path) -> None:
    """A worker 0 started again must not clear tmp/ (or msg/ without env/): others are writing them."""
    harness = Harness(tmp_path)
    in_flight = tmp_path / "queue" / "tmp" / "Q9.msg"
    in_flight.write_bytes(b"being written by another worker")
    scheduler = harness.new_queue()
    assert not in_flight.exists()  # the default start clears it, as after a crash
    in_flight.write_bytes(b"again")
    scheduler.prepare_spool = False
    Deferred.fromCoroutine(scheduler.start())
    assert in_flight.exists()
