"""Counters shared across processes: the master's anvil over its line protocol, SharedAdmission, and Redis's fail-open rule."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.internet.testing import StringTransport
from twisted.test.iosim import connect, FakeTransport
from twisted.trial.unittest import SynchronousTestCase

from mailgate.config import LimitsConfig, SenderRate, StateConfig
from mailgate.limits import state
from mailgate.limits.admission import Admission, Refusal
from mailgate.limits.anvil import FAILED, AnvilClient, AnvilLink, AnvilResponder, Counters, decode, encode
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.limits.redis_state import RedisState


def linked(counters: Counters) -> tuple[AnvilResponder, AnvilLink, Any]:
    """A worker's link and the master's responder, joined by an in-memory transport."""
    server, client = AnvilResponder(counters), AnvilLink()
    pump = connect(server, FakeTransport(server, isServer=True), client, FakeTransport(client, isServer=False))
    return server, client, pump


class AnvilTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        limits = LimitsConfig(max_connections_per_ip=2, connection_rate=None, sender_rate=SenderRate(2, 3600.0))
        self.counters = Counters(limits, self.clock)
        self.server, self.link, self.pump = linked(self.counters)
        self.client = AnvilClient(self.link)

    def ask(self, d: Deferred[Any]) -> Any:
        self.pump.flush()
        return self.successResultOf(d)

    def test_the_per_address_limit_counts_every_worker(self) -> None:
        """Two links (two workers) share one count: the third connection from an address is refused."""
        _, other_link, other_pump = linked(self.counters)
        other = AnvilClient(other_link)
        self.assertIsNone(self.ask(self.client.enter("192.0.2.1")))
        d = other.enter("192.0.2.1")
        other_pump.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.ask(self.client.enter("192.0.2.1")), Refusal.PER_IP)

    def test_leave_frees_the_slot(self) -> None:
        for _ in range(2):
            self.ask(self.client.enter("192.0.2.1"))
        self.client.leave("192.0.2.1")
        self.pump.flush()
        self.assertIsNone(self.ask(self.client.enter("192.0.2.1")))

    def test_a_dead_worker_takes_its_connections_out_of_the_counts(self) -> None:
        for _ in range(2):
            self.ask(self.client.enter("192.0.2.1"))
        self.server.connectionLost(Failure(ConnectionDone()))
        _, link, pump = linked(self.counters)
        d = AnvilClient(link).enter("192.0.2.1")
        pump.flush()
        self.assertIsNone(self.successResultOf(d))

    def test_sender_rate_is_one_bucket_for_the_server(self) -> None:
        self.assertEqual([self.ask(self.client.take("sender", "a@example.test")) for _ in range(2)], [0.0, 0.0])
        self.assertGreater(self.ask(self.client.take("sender", "a@example.test")), 0.0)

    def test_a_lost_master_admits_with_one_log_line(self) -> None:
        self.link.transport.loseConnection()  # type: ignore[union-attr]
        self.pump.flush()
        with capturedLogs() as events:
            self.assertIsNone(self.successResultOf(self.client.enter("192.0.2.1")))
            self.assertEqual(self.successResultOf(self.client.take("sender", "a@example.test")), 0.0)
            self.client.leave("192.0.2.1")  # no error either
        lines = [formatEvent(event) for event in events]
        self.assertEqual(sum("counters are unreachable" in line for line in lines), 1, lines)

    def test_a_question_the_master_never_answered_admits_when_the_link_goes(self) -> None:
        d = self.client.enter("192.0.2.1")
        with capturedLogs() as events:
            self.link.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(sum("counters are unreachable" in formatEvent(event) for event in events), 1)

    def test_the_questions_of_one_read_are_answered_in_one_write_in_order(self) -> None:
        writes: list[bytes] = []

        class Recording(StringTransport):
            def write(self, data: bytes) -> None:
                writes.append(data)

        responder = AnvilResponder(self.counters)
        responder.makeConnection(Recording())
        responder.dataReceived(b"E 192.0.2.9\nE 192.0.2.9\nL 192.0.2.9\nT sender b@example.test\nE 192.0.2.9\n"
                               b"E 192.0.2.9\nT sen")
        self.assertEqual(writes, [b"A \nA \nA 0.0\nA \nA PER_IP\n"])
        responder.dataReceived(b"der b@example.test\n")
        self.assertEqual(writes[1:], [b"A 0.0\n"])

    def test_fields_with_spaces_line_ends_and_percent_signs_arrive_unchanged(self) -> None:
        for text in ("alice", "", "a b", "line\r\nend", "100%", "é@example.test", "%41"):
            self.assertEqual(decode(encode(b"F", ("192.0.2.1", text)).rstrip(b"\n")), (b"F", ["192.0.2.1", text]))

    def test_auth_failures_are_told_to_the_master_and_counted_by_the_other_workers(self) -> None:
        """MirroredThrottle counts and tells (F ip account); an AnvilLink counts what the master passes on."""
        sent: list[tuple[bytes, tuple[str, ...]]] = []

        class Recorder(AnvilLink):
            def send(self, verb: bytes, *fields: str) -> bool:
                sent.append((verb, fields))
                return True

        mine = AuthThrottle(self.clock, failures_per_account=2)
        mirrored = AnvilClient(Recorder()).share_throttle(mine)
        mirrored.record_failure("192.0.2.1", "alice")
        self.assertEqual(sent, [(FAILED, ("192.0.2.1", "alice"))])
        self.assertEqual(mine.failures("192.0.2.1", "alice"), 1)
        theirs = AuthThrottle(self.clock, failures_per_account=2)
        self.link.throttle = theirs
        for _ in range(2):
            self.server.send(FAILED, "192.0.2.1", "Alice")
        self.pump.flush()
        self.assertTrue(theirs.locked_out("192.0.2.1", "alice"))


class SharedAdmissionTests(SynchronousTestCase):
    def test_local_descriptor_refusal_wins_and_both_count_every_connection(self) -> None:
        clock = Clock()
        local = Admission(LimitsConfig(max_connections=1, connection_rate=None), clock, descriptors=10_000)
        asked: list[str] = []

        class Shared:
            def enter(self, ip: str) -> Deferred[Refusal | None]:
                asked.append("enter")
                return succeed(None)

            def leave(self, ip: str) -> None:
                asked.append("leave")

        admission = state.SharedAdmission(local, Shared())  # type: ignore[arg-type]
        self.assertIsNone(self.successResultOf(admission.enter("192.0.2.1")))
        self.assertEqual(self.successResultOf(admission.enter("192.0.2.2")), Refusal.FULL)
        admission.leave("192.0.2.1")
        admission.leave("192.0.2.2")
        self.assertEqual(asked, ["enter", "enter", "leave", "leave"])
        self.assertIsNone(self.successResultOf(admission.enter("192.0.2.3")))

    def test_without_shared_state_everything_stays_local_and_synchronous(self) -> None:
        self.assertIsNone(state.current())
        local = Admission(LimitsConfig(), Clock(), descriptors=10_000)
        self.assertIs(state.shared_admission(local), local)
        throttle = AuthThrottle(Clock())
        self.assertIs(state.shared_throttle(throttle), throttle)
        self.assertEqual(state.rate_limiter("sender", SenderRate(1, 60.0), Clock()).take("a"), 0.0)


class FakeRedis:
    def __init__(self) -> None:
        self.answer: Any = b""
        self.scripts: list[str] = []

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        self.scripts.append(script)
        return self.answer() if callable(self.answer) else succeed(self.answer)


class RedisFallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.redis = Clock(), FakeRedis()
        self.state = RedisState(self.redis, LimitsConfig(), self.clock, fallback_seconds=30.0, where="redis:6379")

    def test_answers_are_the_scripts(self) -> None:
        self.redis.answer = b"PER_IP"
        self.assertEqual(self.successResultOf(self.state.enter("192.0.2.1")), Refusal.PER_IP)
        self.redis.answer = b"2.5"
        self.assertEqual(self.successResultOf(self.state.take("sender", "a@example.test")), 2.5)

    def test_unreachable_fails_open_for_fallback_time_then_refuses_until_an_answer(self) -> None:
        self.redis.answer = lambda: fail(ConnectionRefusedError())
        self.assertIsNone(self.successResultOf(self.state.enter("192.0.2.1")))
        self.assertTrue(self.state.available())
        self.clock.advance(31)
        self.assertFalse(self.state.available())
        self.redis.answer = b""
        self.successResultOf(self.state.enter("192.0.2.1"))
        self.assertTrue(self.state.available())

    def test_no_answer_in_time_counts_as_unreachable(self) -> None:
        self.redis.answer = lambda: Deferred()
        d = self.state.take("sender", "a@example.test")
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), 0.0)
        self.clock.advance(31)
        self.assertFalse(self.state.available())

    def test_from_config_reads_host_port_and_database(self) -> None:
        made = RedisState.from_config(StateConfig("redis://127.0.0.1:1/3", 5.0), LimitsConfig(), self.clock)
        self.assertEqual(made._where, "127.0.0.1:1")
        made._redis.disconnect()

    def test_a_connection_redis_never_counted_is_never_uncounted(self) -> None:
        from mailgate.limits.redis_state import LEAVE

        self.redis.answer = lambda: fail(ConnectionRefusedError())
        self.successResultOf(self.state.enter("192.0.2.1"))
        self.redis.answer = b""
        self.state.leave("192.0.2.1")
        self.assertNotIn(LEAVE, self.redis.scripts)

    def test_a_connection_gone_before_redis_answered_is_uncounted_when_it_does(self) -> None:
        from mailgate.limits.redis_state import LEAVE

        answer: Deferred[Any] = Deferred()
        self.redis.answer = lambda: answer
        d = self.state.enter("192.0.2.1")
        self.state.leave("192.0.2.1")
        self.assertNotIn(LEAVE, self.redis.scripts)
        answer.callback(b"")
        self.successResultOf(d)
        self.assertEqual(self.redis.scripts.count(LEAVE), 1)
        self.state.leave("192.0.2.1")  # a second leave for it: nothing more
        self.assertEqual(self.redis.scripts.count(LEAVE), 1)
