"""Held queue entries: never attempted nor expired while held, delivered on release, held across a restart."""

from __future__ import annotations

from pathlib import Path

from mailgate.outbound import control
from tests.outbound.test_scheduler import Harness


def deferred_entry(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    harness.relay.codes["b@remote.test"] = [451, 250]
    harness.submit([("b@remote.test", "mx")])
    assert harness.store.load("Q1").attempts == 1
    return harness


def test_a_held_entry_is_not_tried_by_its_schedule_nor_by_flush(tmp_path: Path) -> None:
    harness = deferred_entry(tmp_path)
    harness.queue.hold("Q1")
    entry = harness.store.load("Q1")
    assert entry.held and entry.held_since == harness.clock.seconds()
    harness.queue.flush()
    harness.clock.advance(3600)
    assert len(harness.relay.calls) == 1
    harness.queue.release("Q1")
    harness.clock.advance(0)
    assert len(harness.relay.calls) == 2
    assert harness.store.load("Q1") is None  # delivered


def test_time_held_does_not_count_against_max_queue_time(tmp_path: Path) -> None:
    """max_queue_time is 1h; held for 2h, released, and deferred again: not expired, no bounce."""
    harness = deferred_entry(tmp_path)
    harness.relay.codes["b@remote.test"] = [451]
    harness.queue.hold("Q1")
    harness.clock.advance(7200)
    harness.queue.release("Q1")
    harness.clock.advance(0)
    entry = harness.store.load("Q1")
    assert entry is not None and not entry.held
    assert entry.held_seconds == 7200 and entry.attempts == 2
    assert harness.injected == []
    harness.clock.advance(3600)  # now the hour of queue time (not counting the hold) is up
    assert harness.store.load("Q1") is None
    assert len(harness.injected) == 1  # the bounce


def test_a_hold_outlasts_a_restart(tmp_path: Path) -> None:
    harness = deferred_entry(tmp_path)
    harness.queue.hold("Q1")
    harness.queue = harness.new_queue()  # a new server on the same spool
    harness.clock.advance(3600)
    assert len(harness.relay.calls) == 1
    assert harness.spooler.index.get("Q1").held  # known, and shown held, once looked at
    harness.queue.release("Q1")
    harness.clock.advance(0)
    assert harness.store.load("Q1") is None


def test_the_cli_requests_hold_release_and_delete_all(tmp_path: Path) -> None:
    harness = deferred_entry(tmp_path)
    harness.submit([("c@remote.test", "mx")], queue_id="Q2")  # delivered at once
    harness.relay.codes["d@remote.test"] = [451]
    harness.submit([("d@remote.test", "mx")], queue_id="Q3")
    hold = harness.store.request("hold", "Q1")
    control.serve_requests(harness.queue)
    assert harness.store.load("Q1").held and not Path(hold).exists()
    harness.store.request("release", "Q1")
    control.serve_requests(harness.queue)
    harness.clock.advance(0)
    assert harness.store.load("Q1") is None
    assert sorted(harness.store.ids()) == ["Q3"]
    harness.store.request("delete-all")
    control.serve_requests(harness.queue)
    assert harness.store.ids() == [] and len(harness.spooler.index) == 0
