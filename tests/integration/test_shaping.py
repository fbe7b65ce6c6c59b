"""Per-destination shaping and no head-of-line blocking, end to end (real twistd, sinks on 127.0.0.x).

Each destination is its own MX host here: slow.test -> 127.0.0.4, fast.test
-> 127.0.0.5, hole.test -> 127.0.0.6 (accepts and never says a word).
"""

from __future__ import annotations

import time

from tests.support.gateway import eventually
from tests.support.relay_gateway import ALICE, GatewayTestCase, submit

SLOW, FAST, HOLE = "127.0.0.4", "127.0.0.5", "127.0.0.6"


class ShapingTests(GatewayTestCase):
    def setUp(self) -> None:
        super().setUp()
        for name, address in (("slow", SLOW), ("fast", FAST), ("hole", HOLE)):
            self.dns.records[f"{name}.test"] = {"MX": [(10, f"mx.{name}.test")]}
            self.dns.records[f"mx.{name}.test"] = {"A": [address]}

    async def sinks(self, **slow_knobs: object) -> tuple:
        """A slow-destination sink and a fast one on the same port (relay.port is one number)."""
        fast = await self.serve(FAST, final_delay=1.0)
        slow = await self.serve(SLOW, fast.port, **({"final_delay": 1.0} | slow_knobs))
        return slow, fast

    async def test_concurrency_holds_per_destination_only(self) -> None:
        """concurrency = 2 for slow.test: its sink never sees more than 2 sessions at once, while
        fast.test (the default 20) gets its 8 messages at once, done before slow.test is."""
        slow, fast = await self.sinks()
        gateway = await self.start(self.gateway(fast.port, extra='[relay.destination."slow.test"]\nconcurrency = 2\n'))
        for n in range(8):
            submit(gateway, ALICE, [f"user{n}@slow.test"], b"Subject: slow\r\n\r\nhi\r\n")
        for n in range(8):
            submit(gateway, ALICE, [f"user{n}@fast.test"], b"Subject: fast\r\n\r\nhi\r\n")
        await eventually(lambda: len(fast.messages) == 8, "fast.test's eight messages", 10)
        self.assertLess(len(slow.messages), 8)
        await eventually(lambda: len(slow.messages) == 8, "slow.test's eight messages", 30)
        self.assertEqual(slow.most_at_once, 2)
        self.assertGreaterEqual(fast.most_at_once, 6)

    async def test_421_slows_only_that_destination(self) -> None:
        """slow.test answers 421 "too many connections": its concurrency is halved (logged); fast.test
        still gets its messages all at once."""
        slow, fast = await self.sinks(greeting="421 4.7.0 too many connections from your IP")
        gateway = await self.start(self.gateway(fast.port))
        submit(gateway, ALICE, ["user@slow.test"], b"Subject: refused\r\n\r\nhi\r\n")
        await eventually(lambda: "concurrency 20 -> 10" in gateway.log(), "slow.test to be slowed down")
        for n in range(8):
            submit(gateway, ALICE, [f"user{n}@fast.test"], b"Subject: fast\r\n\r\nhi\r\n")
        await eventually(lambda: len(fast.messages) == 8, "fast.test's eight messages", 10)
        self.assertGreaterEqual(fast.most_at_once, 6)
        slowed = [line for line in gateway.log().splitlines() if "concurrency" in line and "->" in line]
        self.assertTrue(slowed and all("slow.test" in line for line in slowed), slowed)

    async def test_black_hole_mx_does_not_hold_up_the_queue(self) -> None:
        """50 messages wait on an MX that accepts and never answers: a healthy destination's message
        is delivered within seconds, and the black hole holds no more than its own 20 connections."""
        hole = await self.serve(HOLE, stall_on="CONNECT")
        fast = await self.serve(FAST, hole.port)
        gateway = self.gateway(hole.port)
        self.kill_at_cleanup(gateway)  # 20 silent sessions would take the whole SIGTERM grace
        await self.start(gateway)
        for n in range(50):
            submit(gateway, ALICE, [f"user{n}@hole.test"], b"Subject: into the hole\r\n\r\nhi\r\n")
        await eventually(lambda: hole.live >= 20, "the black hole to hold its 20 sessions")
        started = time.monotonic()
        submit(gateway, ALICE, ["user@fast.test"], b"Subject: healthy\r\n\r\nhi\r\n")
        await eventually(lambda: fast.messages, "the healthy destination's message", 5)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(hole.most_at_once, 20)
