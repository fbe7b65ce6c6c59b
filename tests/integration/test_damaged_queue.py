"""Damaged spool entries under a real `twistd mailgate`: set aside once, listed, deletable, never relayed.

The spool is laid out before the gateway starts, as a crash, a full disk or
a careless hand could leave it: four unreadable envelopes (truncated JSON,
empty, `{}`, bytes that are not UTF-8), one entry whose message was cut
short after it was queued, and one good entry. The good one is delivered;
each damaged one is moved to corrupt/ with one log line and no traceback,
the truncated message never reaches the MX, `mailgate queue list` shows
them all, and `mailgate queue delete` removes one through the server.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailgate.outbound.spool import QueuedMessage, RecipientState
from mailgate.store.maildir_writer import StoredMessage
from tests.support.relay_gateway import ALICE, BOB, PRIMARY, GatewayTestCase, pause
from tests.support.gateway import eventually

UNREADABLE = {
    "TRUNCATED": b'{"id": "TRUNCATED", "sender": "alice@example.test", "arr',
    "EMPTY": b"",
    "BRACES": b"{}",
    "GARBAGE": bytes(range(128, 256)),
}


class DamagedQueueTests(GatewayTestCase):
    def queue_message(self, queue_id: str, body: bytes) -> None:
        entry = QueuedMessage(id=queue_id, sender=ALICE, arrived=0.0, recipients=[RecipientState(BOB, "mx")])
        header = f"Received: by mx.example.test (mailgate) id {queue_id};\n\tdate\n".encode()
        self.queue.add(entry, StoredMessage.build(header, [body], len(body), body.count(b"\n")))

    def lay_out_the_spool(self) -> None:
        self.queue.prepare()
        self.queue_message("GOOD", b"Subject: good\n\nwhole\n")
        self.queue_message("CUT", b"Subject: cut short\n\n" + b"line\n" * 100 + b"the end\n")
        cut = Path(self.queue.message_path("CUT"))
        cut.write_bytes(cut.read_bytes()[:-40])
        env = self.root / "var" / "queue" / "env"
        for queue_id, content in UNREADABLE.items():
            (env / queue_id).write_bytes(content)
            (self.root / "var" / "queue" / "msg" / queue_id).write_bytes(b"Subject: x\n\ny\n")

    async def test_damaged_entries_are_set_aside_once_and_listed(self) -> None:
        primary = await self.serve(PRIMARY)
        self.lay_out_the_spool()
        gateway = await self.start(self.gateway(primary.port))
        damaged = {*UNREADABLE, "CUT"}
        await eventually(lambda: any(b"Subject: good" in m for m in primary.messages), "the good message")
        await pause(2.5)  # longer than both retry intervals: a damaged entry tried again would show
        self.assertNotIn(b"cut short", b"".join(primary.messages))
        self.assertEqual(len(primary.messages), 1)
        self.assertEqual(self.set_aside(), damaged)
        self.assertEqual(self.queue.ids(), [])

        log = gateway.log()
        self.assertNotIn("Traceback", log)
        for queue_id in damaged:
            lines = [line for line in log.splitlines() if queue_id in line]
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(f"queue: {queue_id}: damaged entry set aside in corrupt/: ", lines[0])

        listed = await self.cli(gateway, "queue", "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        items = {item["id"]: item for item in json.loads(listed.stdout)}
        self.assertEqual(set(items), damaged)
        self.assertTrue(all(item["corrupt"] for item in items.values()))
        self.assertIn("envelope file is not JSON", items["GARBAGE"]["reason"])
        self.assertIn("message file has", items["CUT"]["reason"])
        self.assertEqual(items["CUT"]["recipients"], [BOB])
        text = await self.cli(gateway, "queue", "list")
        self.assertEqual((text.returncode, text.stdout.count("  corrupt: ")), (0, len(damaged)), text.stderr)

        deleted = await self.cli(gateway, "queue", "delete", "CUT")
        self.assertEqual((deleted.returncode, deleted.stdout), (0, "deleted CUT\n"), deleted.stderr)
        self.assertEqual(self.set_aside(), set(UNREADABLE))

    def set_aside(self) -> set[str]:
        """The ids with a file in corrupt/."""
        corrupt = self.root / "var" / "queue" / "corrupt"
        return {path.name.rpartition(".")[0] for path in corrupt.iterdir()} if corrupt.exists() else set()
