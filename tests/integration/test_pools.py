"""Dedicated sending IPs end to end: a pool's senders leave from its addresses with its EHLO name.

127.0.0.10 and .11 are local on Linux (all of 127.0.0.0/8 is); 192.0.2.55
(TEST-NET-1) is not, so binding it fails and the pool skips it with a log line.
"""

from __future__ import annotations

from tests.support.gateway import eventually
from tests.support.relay_gateway import ALICE, BOB, CAROL, PRIMARY, GatewayTestCase, submit

NEWS = "news@example.test"
POOL = """
[[relay.pool]]
name = "news"
addresses = ["127.0.0.10", "192.0.2.55", "127.0.0.11"]
helo = "news-mta.example.test"
senders = ["news@example.test"]
"""


class PoolTests(GatewayTestCase):
    async def test_pool_senders_leave_from_the_pool(self) -> None:
        """Four messages from the pool's sender arrive from .10 and .11 with the pool's EHLO; the
        unbindable address is skipped with a log line; ALICE's message leaves as before."""
        sink = await self.serve(PRIMARY)
        gateway = await self.start(self.gateway(sink.port, {"connection_cache_time": "0s"}, extra=POOL))
        for n in range(4):
            submit(gateway, NEWS, [BOB], f"Subject: news {n}\r\n\r\nhi\r\n".encode())
        submit(gateway, ALICE, [CAROL], b"Subject: not news\r\n\r\nhi\r\n")
        await eventually(lambda: len(sink.messages) == 5, "five messages at the sink")
        await self.queue_empty()
        news = [s for s in sink.sessions if any(c.startswith(f"MAIL FROM:<{NEWS}>") for c in s.commands)]
        other = [s for s in sink.sessions if any(c.startswith(f"MAIL FROM:<{ALICE}>") for c in s.commands)]
        self.assertEqual(len(news), 4)
        self.assertEqual({s.peer for s in news}, {"127.0.0.10", "127.0.0.11"})
        self.assertEqual({s.helo for s in news}, {"news-mta.example.test"})
        [alice] = other
        self.assertNotIn(alice.peer, {"127.0.0.10", "127.0.0.11"})
        self.assertEqual(alice.helo, "mx.example.test")
        self.assertIn("pool news: cannot bind 192.0.2.55", gateway.log())

    async def test_bounce_through_a_pool_names_its_helo(self) -> None:
        """A recipient refused on a pool's connection: the DSN's Reporting-MTA is the pool's name."""
        sink = await self.serve(PRIMARY, rcpt_replies={BOB: "550 5.1.1 no such user"})
        gateway = self.gateway(sink.port, extra=POOL)
        gateway.add_user(NEWS)
        await self.start(gateway)
        submit(gateway, NEWS, [BOB], b"Subject: doomed\r\n\r\nhi\r\n")
        raw, parsed = await self.bounce_for(gateway, NEWS)
        status = self.assertReport(raw, parsed)
        self.assertIn(b"Reporting-MTA: dns; news-mta.example.test", status)
        self.assertEqual(sink.sessions[0].peer, "127.0.0.10")
