"""[[event_webhook]]: events spooled to disk and POSTed, signed, to a real HTTP receiver on loopback.

trial TestCases: the receiver and the plugin share the running reactor, the
spool is written through its thread pool, and every wait is an asynchronous
poll. Retry intervals and timeouts are fractions of a second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailgate.builtin.event_sender import MAX_IN_FLIGHT, attempts_by_age
from mailgate.builtin.event_spool import EventSpool, new_event_id, spooled_at
from mailgate.builtin.event_webhook import EventWebhooks
from mailgate.config import parse_config
from mailgate.outbound.retry import RetryPolicy
from tests.support.gateway import eventually, free_port
from tests.support.http_receiver import Receiver, listen
from tests.support.logs import LogLines

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def event(kind: str = "delivered", number: int = 0) -> dict[str, Any]:
    return {
        "type": kind, "time": "2024-01-02T09:30:01Z", "queue_id": f"Q{number}", "mail_from": "alice@example.test",
        "recipient": "bob@remote.test", "route": "mx", "reply": "250 2.0.0 Ok", "client": None, "attempt": 1,
    }


class EventWebhookTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-events-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        self.spool = self.root / "var" / "events" / "crm"
        self.logs = LogLines(self)

    def plugin(self, url: str, relay: dict[str, Any] | None = None, max_in_memory: int = 1000,
               **webhook: Any) -> EventWebhooks:
        config = parse_config({
            "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
            "server": {"state_dir": str(self.root / "var")},
            "relay": {"retry_intervals": ["0.2s"], **(relay or {})},
            "event_webhook": [{"name": "crm", "url": url, "secret": WHSEC, "timeout": "2s", **webhook}],
        })
        plugin = EventWebhooks(reactor=reactor, max_in_memory=max_in_memory)
        plugin.mailgate_configure(config)
        self.addCleanup(plugin.close)
        return plugin

    def spooled(self) -> list[str]:
        return sorted(name for name in os.listdir(self.spool) if name.startswith("evt_")) if self.spool.is_dir() else []

    async def test_an_event_is_posted_as_signed_json_then_unspooled(self) -> None:
        receiver = Receiver([204])
        plugin = self.plugin(listen(self, receiver))
        self.assertIsNone(plugin.mailgate_event(event()))
        [request] = await eventually(lambda: receiver.requests, "the POST")
        self.assertEqual(request["path"], "/events")
        self.assertEqual(request["headers"]["content-type"], "application/json")
        self.assertEqual(Webhook(WHSEC).verify(request["body"], request["headers"]), event())
        self.assertRegex(request["headers"]["webhook-id"], r"^evt_[0-9a-f]{32}$")
        await eventually(lambda: not self.spooled(), "the event file to go")

    async def test_the_id_is_the_same_on_a_retry(self) -> None:
        receiver = Receiver([500, 200])
        plugin = self.plugin(listen(self, receiver))
        plugin.mailgate_event(event())
        await eventually(lambda: len(receiver.requests) == 2 and not self.spooled(), "a retry, then delivery")
        first, second = receiver.requests
        self.assertEqual(first["headers"]["webhook-id"], second["headers"]["webhook-id"])
        self.assertEqual(first["body"], second["body"])
        for request in receiver.requests:
            Webhook(WHSEC).verify(request["body"], request["headers"])
        self.assertEqual(len(self.logs.matching("events stay spooled and are retried")), 1)
        self.assertEqual(len(self.logs.matching("answers again")), 1)

    async def test_only_the_event_types_asked_for_are_sent(self) -> None:
        receiver = Receiver()
        plugin = self.plugin(listen(self, receiver), events=["bounced", "expired"])
        for kind in ("received", "refused", "delivered", "deferred", "bounced", "expired"):
            plugin.mailgate_event(event(kind))
        await eventually(lambda: len(receiver.requests) == 2 and not self.spooled(), "two POSTs")
        kinds = {Webhook(WHSEC).verify(r["body"], r["headers"])["type"] for r in receiver.requests}
        self.assertEqual(kinds, {"bounced", "expired"})

    async def test_other_4xx_drops_the_event_with_a_log_line(self) -> None:
        receiver = Receiver([422])
        plugin = self.plugin(listen(self, receiver))
        plugin.mailgate_event(event())
        await eventually(lambda: receiver.requests and not self.spooled(), "the refused event to go")
        [line] = self.logs.matching("dropped: refused with HTTP 422")
        self.assertIn(receiver.requests[0]["headers"]["webhook-id"], line)
        self.assertEqual(len(receiver.requests), 1)

    async def test_an_expired_event_is_dropped_with_a_log_line(self) -> None:
        receiver = Receiver([503])
        plugin = self.plugin(listen(self, receiver), relay={"max_queue_time": "1s"})
        plugin.mailgate_event(event())
        await eventually(lambda: self.logs.matching("not delivered within relay.max_queue_time"), "the expiry")
        self.assertEqual(self.spooled(), [])
        self.assertGreater(len(receiver.requests), 2)
        self.assertIn("HTTP 503", self.logs.matching("relay.max_queue_time")[0])

    async def test_a_hanging_receiver_never_holds_mailgate_event_or_memory(self) -> None:
        """1000 events while the receiver hangs: each call returns at once, every event is on
        disk, at most 50 ids are held, a few POSTs are open; all arrive once it answers."""
        receiver = Receiver(hang=True)
        plugin = self.plugin(listen(self, receiver), max_in_memory=50, timeout="0.5s")
        for number in range(1000):
            self.assertIsNone(plugin.mailgate_event(event(number=number)))
        sender = plugin.senders["crm"]
        self.assertLessEqual(sender.in_memory, 50)
        await eventually(lambda: len(self.spooled()) == 1000, "1000 event files", 30)
        await eventually(lambda: receiver.requests, "a POST to hang")
        self.assertLessEqual(sender.in_memory, 50)
        receiver.hang = False
        await eventually(lambda: not self.spooled(), "every event delivered", 45)
        delivered = {Webhook(WHSEC).verify(r["body"], r["headers"])["queue_id"] for r in receiver.requests}
        self.assertEqual(delivered, {f"Q{number}" for number in range(1000)})
        self.assertLessEqual(receiver.most_open, MAX_IN_FLIGHT)
        self.assertLessEqual(sender.in_memory, 50)

    async def test_a_closed_port_then_a_receiver(self) -> None:
        port = free_port()
        plugin = self.plugin(f"http://127.0.0.1:{port}/events")
        for number in range(5):
            plugin.mailgate_event(event(number=number))
        await eventually(lambda: self.logs.matching("ConnectionRefusedError"), "a refused connection")
        self.assertEqual(len(self.spooled()), 5)
        receiver = Receiver()
        listen(self, receiver, port)
        await eventually(lambda: not self.spooled(), "the five events delivered", 20)
        self.assertEqual(len({r["headers"]["webhook-id"] for r in receiver.requests}), 5)

    async def test_events_spooled_before_a_restart_are_sent_after_it(self) -> None:
        dead = f"http://127.0.0.1:{free_port()}/events"
        first = self.plugin(dead)
        for number in range(3):
            first.mailgate_event(event(number=number))
        await eventually(lambda: len(self.spooled()) == 3, "three event files")
        await first.close()
        ids = self.spooled()
        (self.spool / "tmp" / ids[0]).write_bytes(b'{"half')  # a crash mid-write leaves this
        receiver = Receiver()
        second = self.plugin(listen(self, receiver))
        await eventually(lambda: not self.spooled(), "the spooled events delivered")
        self.assertEqual(sorted(r["headers"]["webhook-id"] for r in receiver.requests), ids)
        second.mailgate_event(event(number=9))  # the first write after a start sweeps tmp/
        await eventually(lambda: len(receiver.requests) == 4, "the new event")
        self.assertEqual(os.listdir(self.spool / "tmp"), [])


class SpoolTests(SynchronousTestCase):
    def test_nothing_is_spooled_without_an_event_webhook(self) -> None:
        root = tempfile.mkdtemp(prefix="mailgate-events-")
        self.addCleanup(shutil.rmtree, root, True)
        plugin = EventWebhooks(reactor=reactor)
        plugin.mailgate_configure(parse_config({"listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:1"}],
                                                "server": {"state_dir": os.path.join(root, "var")}}))
        self.assertIsNone(plugin.mailgate_event(event()))
        self.assertEqual(os.listdir(root), [])

    def test_retries_follow_retry_intervals_counted_from_spooling(self) -> None:
        policy = RetryPolicy((60.0, 300.0, 900.0), 86400.0)
        ages = {0: 1, 59: 1, 60: 2, 359: 2, 360: 3, 10_000: 3}
        self.assertEqual({age: attempts_by_age(policy, age) for age in ages}, ages)
        self.assertEqual(policy.delay(attempts_by_age(policy, 100), jitter=lambda: 0.0), 300.0)

    def test_ids_carry_their_spooling_time_and_sort_by_it(self) -> None:
        early, late = new_event_id(1_700_000_000.25), new_event_id(1_700_000_001.0)
        self.assertAlmostEqual(spooled_at(early), 1_700_000_000.25, places=6)
        self.assertLess(early, late)
        self.assertNotEqual(new_event_id(5.0), new_event_id(5.0))

    def test_a_listing_gives_the_earliest_due_and_says_whether_more_wait(self) -> None:
        from twisted.internet.defer import maybeDeferred

        directory = tempfile.mkdtemp(prefix="mailgate-spool-")
        self.addCleanup(shutil.rmtree, directory, True)
        spool = EventSpool(directory, maybeDeferred)
        ids = [new_event_id(1000.0 + n) for n in range(5)]
        for n, event_id in enumerate(ids):
            self.successResultOf(spool.add(event_id, b"{}", 2000.0 - n))  # due in reverse order
        Path(directory, "stray.txt").write_text("not an event")
        found, more = self.successResultOf(spool.list_due(frozenset({ids[4]}), 2))
        self.assertEqual([event_id for _, event_id in found], [ids[3], ids[2]])
        self.assertTrue(more)
        self.assertEqual(self.successResultOf(spool.list_due(frozenset(), 10))[1], False)
