"""The queue in memory: what the Spooler writes, by destination and age, for the status page and metrics."""

from __future__ import annotations

from pathlib import Path

from mailgate.outbound.entry import QueuedMessage, RecipientState
from mailgate.outbound.queue_index import QueueIndex, destination
from tests.outbound.test_scheduler import Harness


def entry(queue_id: str, arrived: float, *recipients: tuple[str, str], error: str | None = None) -> QueuedMessage:
    return QueuedMessage(queue_id, "s@example.test", arrived, [RecipientState(a, r) for a, r in recipients],
                         last_error=error)


def test_destinations_are_domains_for_mx_and_routes_otherwise() -> None:
    assert destination("a@Remote.test".lower(), "mx") == "remote.test"
    assert destination("a@x.test", "smtp:10.0.0.1:25") == "smtp:10.0.0.1:25"
    assert destination("a@x.test", "webhook:tickets") == "webhook:tickets"


def test_counts_oldest_and_the_biggest_destinations() -> None:
    index = QueueIndex()
    index.note(entry("A", 100.0, ("a@one.test", "mx"), ("b@two.test", "mx")))
    index.note(entry("B", 50.0, ("c@one.test", "mx"), error="451 4.2.1 busy"))
    index.note(entry("C", 70.0, ("d@three.test", "mx")))
    index.resumed(["OLD", "A"])
    assert len(index) == 4 and index.unread == 1
    assert index.oldest_arrival() == 50.0
    assert index.destination_counts(2) == ([("one.test", 2), ("three.test", 1)], 1)  # ties by name
    assert [s.queue_id for s in index.oldest_for("one.test", 10)] == ["B", "A"]
    assert index.get("B").last_error == "451 4.2.1 busy"
    done = entry("B", 50.0, ("c@one.test", "mx"))
    done.recipients[0].status = "delivered"
    index.note(done)  # nothing pending: gone
    index.discard("OLD")
    assert len(index) == 2 and index.oldest_arrival() == 70.0
    assert index.destination_counts(5) == ([("one.test", 1), ("three.test", 1), ("two.test", 1)], 0)


def test_the_spooler_keeps_it(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.relay.codes["b@remote.test"] = [451, 250]
    harness.submit([("b@remote.test", "mx"), ("c@remote.test", "mx")])
    summary = harness.spooler.index.get("Q1")
    assert summary.recipients == (("b@remote.test", "remote.test"),)  # c was delivered
    assert summary.last_error == "451 4.2.0 451 scripted" and summary.attempts == 1
    harness.clock.advance(70)
    assert len(harness.spooler.index) == 0
