"""The master's supervision rules, on a fake clock: restart delays, start-up deaths, the queue hand-over."""

from __future__ import annotations

from twisted.internet.task import Clock

from mailgate.app.worker_output import WorkerProcess
from mailgate.app.workers import FIRST_RESTART_SECONDS, LONGEST_RESTART_SECONDS, Master
from mailgate.config import parse_config
from mailgate.core.queue_ids import part_of

CONFIG = {
    "server": {"workers": 2},
    "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525:interface=127.0.0.1"}],
}


class FakeReactor(Clock):
    stopped = False

    def stop(self) -> None:
        self.stopped = True


def master() -> tuple[Master, FakeReactor, list[int]]:
    reactor = FakeReactor()
    spawned: list[int] = []
    gateway = Master(parse_config(CONFIG), "mailgate.toml", reactor)

    def spawn(index: int) -> None:  # what _spawn records, without a process
        spawned.append(index)
        gateway._started_at[index] = reactor.seconds()

    gateway._spawn = spawn  # type: ignore[method-assign]
    return gateway, reactor, spawned


def die(gateway: Master, index: int) -> None:
    gateway.worker_ended(WorkerProcess(gateway, index), "killed")


class Link:
    """A worker's link as the master sees it: the lines sent to it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, ...]]] = []

    def send(self, verb: bytes, *fields: str) -> bool:
        self.sent.append((verb, fields))
        return True


def test_a_worker_dying_young_is_restarted_later_each_time_up_to_the_longest_delay() -> None:
    gateway, reactor, spawned = master()
    gateway.worker_ready(1, object())  # type: ignore[arg-type]
    delays = []
    for _ in range(9):
        die(gateway, 1)
        delays.append(reactor.getDelayedCalls()[0].getTime() - reactor.seconds())
        reactor.advance(delays[-1])
    assert delays[0] == FIRST_RESTART_SECONDS
    assert delays[1] == 2 * FIRST_RESTART_SECONDS
    assert delays[-1] == LONGEST_RESTART_SECONDS
    assert spawned == [1] * 9
    assert gateway.restarts == 9


def test_a_worker_that_ran_long_is_restarted_at_once() -> None:
    gateway, reactor, spawned = master()
    gateway.worker_ready(0, Link())  # type: ignore[arg-type]
    reactor.advance(3600)
    die(gateway, 0)
    reactor.advance(0)
    assert spawned == [0]


def test_a_worker_dying_before_it_was_ever_ready_stops_the_server() -> None:
    gateway, reactor, spawned = master()
    die(gateway, 1)
    assert reactor.stopped and spawned == []


def test_a_hand_over_goes_to_the_part_s_worker_and_waits_while_it_is_away() -> None:
    """An id goes to the worker whose part of the spool it is in; spooled while that worker is
    down (or not yet started), it reaches it when it is back, in order."""
    gateway, _, _ = master()
    ids = [f"Q{n}" for n in range(20)]
    workers = [Link(), Link()]
    gateway.worker_ready(0, workers[0])  # type: ignore[arg-type]
    for queue_id in ids[:10]:
        gateway.to_part(queue_id, b"Q", queue_id)
    gateway.worker_ready(1, workers[1])  # type: ignore[arg-type]
    die(gateway, 0)
    for queue_id in ids[10:]:
        gateway.to_part(queue_id, b"Q", queue_id)
    again = Link()
    gateway.worker_ready(0, again)  # type: ignore[arg-type]
    got = [[fields[0] for verb, fields in link.sent if verb == b"Q"] for link in (workers[0], again, workers[1])]
    assert got[0] == [i for i in ids[:10] if part_of(i, 2) == 0]
    assert got[1] == [i for i in ids[10:] if part_of(i, 2) == 0]
    assert got[2] == [i for i in ids if part_of(i, 2) == 1]
    assert got[0] and got[1] and got[2]


def test_a_cli_request_goes_to_the_entry_s_worker_and_its_answer_to_worker_0() -> None:
    gateway, _, _ = master()
    workers = [Link(), Link()]
    for index, link in enumerate(workers):
        gateway.worker_ready(index, link)  # type: ignore[arg-type]
    theirs = next(f"Q{n}" for n in range(20) if part_of(f"Q{n}", 2) == 1)
    gateway.pass_request(["delete", theirs, "7"])
    gateway.pass_request(["flush"])
    gateway.to_worker(0, b"D", "7")
    assert [line for line in workers[1].sent if line[0] == b"C"] == [(b"C", ("delete", theirs, "7")),
                                                                    (b"C", ("flush",))]
    assert [line for line in workers[0].sent if line[0] in (b"C", b"D")] == [(b"D", ("7",))]


def test_worker_0_hears_the_restart_count_when_it_is_ready_and_at_each_restart() -> None:
    """Worker 0 serves mailgate_worker_restarts_total: told the master's count at its start (its own
    restart included) and whenever another worker is started again."""
    gateway, reactor, _ = master()
    first = Link()
    gateway.worker_ready(0, first)  # type: ignore[arg-type]
    gateway.worker_ready(1, Link())  # type: ignore[arg-type]
    die(gateway, 1)
    assert first.sent == [(b"R", ("0",)), (b"R", ("1",))]
    die(gateway, 0)
    again = Link()
    gateway.worker_ready(0, again)  # type: ignore[arg-type]
    assert first.sent[-1] == (b"R", ("1",)) and again.sent == [(b"R", ("2",))]
