"""MergedQueue: worker 0's view of every worker's part, from its own QueueIndex and the others' snapshots."""

from __future__ import annotations

import random
from pathlib import Path

from mailgate.ops.queue_view import MergedQueue, read_snapshots, snapshot, write_snapshot
from mailgate.outbound.queue_index import QueueIndex
from tests.outbound.test_queue_index import entry

DOMAINS = ["one.test", "two.test", "three.test", "four.test"]


def parts(count: int = 3, entries: int = 60) -> tuple[QueueIndex, list[QueueIndex]]:
    """One index of everything, and the same entries cut into `count` parts."""
    rng = random.Random(7)
    whole, cut = QueueIndex(), [QueueIndex() for _ in range(count)]
    for number in range(entries):
        made = entry(f"Q{number}", 1000.0 + rng.random() * 500, *[(f"r{number}@{d}", "mx")
                                                                   for d in rng.sample(DOMAINS, rng.randint(1, 2))],
                     error=f"451 try {number}")
        whole.note(made)
        cut[number % count].note(made)
    return whole, cut


def test_the_merged_parts_show_what_one_index_of_everything_would(tmp_path: Path) -> None:
    whole, (own, *others) = parts()
    paths = [str(tmp_path / f"queue-{n}.json") for n in (1, 2)]
    for path, part in zip(paths, others):
        write_snapshot(path, snapshot(part, 20, 10))
    merged = MergedQueue(own, read_snapshots([*paths, str(tmp_path / "queue-3.json")]))  # 3: not started
    assert len(merged) == len(whole) == 60
    assert merged.oldest_arrival() == whole.oldest_arrival()
    assert merged.destination_counts(20) == whole.destination_counts(20)
    assert merged.destination_counts(2) == whole.destination_counts(2)  # the rest as "others"
    for domain in DOMAINS:
        assert merged.oldest_for(domain, 10) == whole.oldest_for(domain, 10)
    assert merged.unread == 0


def test_a_damaged_snapshot_is_left_out_and_the_rest_shown(tmp_path: Path) -> None:
    _, (own, other, _) = parts()
    good, bad = tmp_path / "queue-1.json", tmp_path / "queue-2.json"
    write_snapshot(str(good), snapshot(other, 20, 10))
    bad.write_text('{"count": ')
    merged = MergedQueue(own, read_snapshots([str(good), str(bad)]))
    assert len(merged) == len(own) + len(other)
    assert sorted(tmp_path.iterdir()) == sorted([good, bad])  # no temporary file left by the write
