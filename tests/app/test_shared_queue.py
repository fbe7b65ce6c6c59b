"""AllParts and carry_out: the CLI's requests across every worker's part of the spool (#18)."""

from __future__ import annotations

from pathlib import Path

from mailgate.app.shared_queue import CONTROL, DONE, AllParts, carry_out
from mailgate.core.queue_ids import part_of
from mailgate.outbound import control
from tests.app.test_workers import Link  # the lines a link sends: the master's end, or here a worker's
from tests.outbound.test_scheduler import Harness

IDS = [f"Q{n}" for n in range(40)]


def workers(tmp_path: Path) -> list[Harness]:
    """Two workers' schedulers over one spool, each with an entry of its own part waiting (its relay says 451)."""
    made = []
    for index in (0, 1):
        harness = Harness(tmp_path, part=(index, 2, lambda queue_id: None))
        harness.store.prepare()
        harness.relay.codes["b@remote.test"] = [451]
        harness.submit([("b@remote.test", "mx")], queue_id=next(i for i in IDS if part_of(i, 2) == index))
        made.append(harness)
    return made


def test_worker_0_deletes_its_own_entry_and_asks_the_owner_of_another(tmp_path: Path) -> None:
    zero, one = workers(tmp_path)
    mine, theirs = (next(i for i in IDS if part_of(i, 2) == part) for part in (0, 1))
    to_master = Link()
    requests = AllParts(zero.queue, to_master, 0, 2)  # type: ignore[arg-type]
    requests.delete(mine)
    assert zero.store.load(mine) is None and to_master.sent == []
    asked = requests.delete(theirs)
    assert not asked.called and one.store.load(theirs) is not None
    [(verb, fields)] = to_master.sent
    assert verb == CONTROL and fields[:2] == ("delete", theirs)
    from_owner = Link()
    carry_out(one.queue, from_owner, list(fields))  # the master passed it on to worker 1
    assert one.store.load(theirs) is None
    assert from_owner.sent == [(DONE, (fields[2],))]
    requests.done(fields[2])  # the master passed the answer back
    assert asked.called


def test_a_flush_is_carried_out_here_and_passed_to_every_other_worker(tmp_path: Path) -> None:
    zero, one = workers(tmp_path)
    to_master = Link()
    AllParts(zero.queue, to_master, 0, 2).flush()  # type: ignore[arg-type]
    assert to_master.sent == [(CONTROL, ("flush",))]
    zero.relay.codes["b@remote.test"] = [250]
    one.relay.codes["b@remote.test"] = [250]
    zero.clock.advance(0)
    carry_out(one.queue, Link(), ["flush"])  # type: ignore[arg-type]
    one.clock.advance(0)
    assert (len(zero.relay.calls), len(one.relay.calls)) == (2, 2)
    assert zero.store.ids() == []


def test_delete_all_asks_each_entry_s_worker(tmp_path: Path) -> None:
    """`mailgate queue delete --all` with workers: worker 0 lists the one spool and asks for each entry."""
    zero, one = workers(tmp_path)
    to_master = Link()
    requests = AllParts(zero.queue, to_master, 0, 2)  # type: ignore[arg-type]
    finished: list[object] = []
    control.delete_all(requests).addBoth(finished.append)
    [(verb, fields)] = to_master.sent  # worker 1's entry; worker 0 deletes its own itself
    assert verb == CONTROL and fields[0] == "delete" and part_of(fields[1], 2) == 1
    assert zero.store.ids() == [fields[1]] and finished == []
    carry_out(one.queue, Link(), list(fields))  # type: ignore[arg-type]
    requests.done(fields[2])
    assert zero.store.ids() == [] and len(finished) == 1
