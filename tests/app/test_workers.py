"""The master's supervision rules, on a fake clock: restart delays, start-up deaths, the queue hand-over."""

from __future__ import annotations

from twisted.internet.task import Clock

from mailgate.app.workers import FIRST_RESTART_SECONDS, LONGEST_RESTART_SECONDS, Master, WorkerProcess
from mailgate.config import parse_config

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


def test_ids_spooled_while_worker_0_is_away_reach_it_when_it_is_back() -> None:
    gateway, _, _ = master()
    gateway.hand_to_queue("Q1")
    link = Link()
    gateway.worker_ready(0, link)  # type: ignore[arg-type]
    gateway.hand_to_queue("Q2")
    assert [line for line in link.sent if line[0] == b"Q"] == [(b"Q", ("Q1",)), (b"Q", ("Q2",))]


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
