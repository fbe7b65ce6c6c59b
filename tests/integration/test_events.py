"""Delivery events end to end: a real `twistd mailgate`, a plugin writing every mailgate_event down,
and an [[event_webhook]] posting them to a real HTTP receiver."""

from __future__ import annotations

import json
import smtplib
import textwrap
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook

from tests.support.gateway import eventually
from tests.support.http_receiver import Receiver, listen
from tests.support.relay_gateway import (
    ALICE,
    BOB,
    DEFER,
    PRIMARY,
    GatewayTestCase,
    submit,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RECORDER = textwrap.dedent('''
    import json
    from mailgate import hookimpl

    @hookimpl
    def mailgate_event(event):
        with open("events.jsonl", "a") as log:
            log.write(json.dumps(event) + "\\n")
''')


class EventTests(GatewayTestCase):
    def recorded(self) -> list[dict[str, Any]]:
        path = self.root / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def plugin_config(self) -> str:
        plugins = self.root / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "recorder.py").write_text(RECORDER)
        return f'[plugins]\npaths = ["{plugins}"]\nenable = ["recorder"]\n'

    async def test_local_delivery_refusal_deferral_and_bounce_arrive_in_order(self) -> None:
        primary = await self.serve(PRIMARY, rcpt_default=DEFER)
        gateway = self.gateway(primary.port, {"max_queue_time": "1h"}, extra=self.plugin_config())
        gateway.add_user(ALICE)
        await self.start(gateway)
        with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:
            client.ehlo("client.test")
            client.mail("bob@remote.test")
            assert client.rcpt("nobody@example.test")[0] == 550
            client.rcpt(ALICE)
            client.data(b"Subject: local\r\n\r\nhi\r\n")
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: relayed\r\n\r\nhi\r\n")
        await eventually(lambda: any(e["type"] == "deferred" for e in self.recorded()), "a deferral")
        primary.rcpt_default = "550 5.1.1 no such user here"
        await eventually(lambda: any(e["type"] == "bounced" for e in self.recorded()), "the bounce", 20)
        events = [e for e in self.recorded() if e["recipient"] in ("nobody@example.test", ALICE, BOB)]
        kinds = [(e["type"], e["recipient"]) for e in events if e["queue_id"] in ("", queue_id) or e["recipient"] != BOB]
        assert kinds[:3] == [("refused", "nobody@example.test"), ("received", ALICE), ("delivered", ALICE)], kinds
        relayed = [e for e in events if e["queue_id"] == queue_id]
        assert [e["type"] for e in relayed][0] == "received"
        assert [e["type"] for e in relayed][-1] == "bounced" and "deferred" in [e["type"] for e in relayed]
        refused, bounce = events[0], relayed[-1]
        assert (refused["client"], refused["reply"]) == ("127.0.0.1", "550 5.1.1 Recipient address rejected: User unknown")
        assert (bounce["route"], bounce["reply"], bounce["mail_from"]) == ("mx", "550 5.1.1 no such user here", ALICE)
        assert bounce["attempt"] >= 2 and bounce["time"].endswith("Z")

    async def test_event_webhook_posts_signed_events_and_a_dead_receiver_delays_nothing(self) -> None:
        receiver = Receiver([503, 200])
        url = listen(self, receiver)
        dead = "http://127.0.0.1:9/never"  # a closed port: every POST fails and is retried
        extra = (f'[[event_webhook]]\nname = "events"\nurl = "{url}"\nsecret = "{SECRET}"\nevents = ["received"]\n\n'
                 f'[[event_webhook]]\nname = "dead"\nurl = "{dead}"\nsecret = "{SECRET}"\n')
        gateway = self.gateway(1, extra=extra)
        gateway.add_user(ALICE)
        await self.start(gateway)
        for n in range(3):
            with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:
                client.sendmail("bob@remote.test", [ALICE], f"Subject: {n}\r\n\r\nhi\r\n".encode())
        assert len(gateway.new_messages(ALICE)) == 3  # the dead receiver held up no delivery
        await eventually(lambda: len({r["headers"]["webhook-id"] for r in receiver.requests}) == 3 and
                         len(receiver.requests) >= 4, "three events, one of them retried")
        ids = [r["headers"]["webhook-id"] for r in receiver.requests]
        assert ids[0] in ids[1:]  # the one answered 503 came again, with its id: receivers can dedupe
        for request in receiver.requests:
            event = Webhook(SECRET).verify(request["body"], request["headers"])
            assert event["type"] == "received" and event["recipient"] == ALICE
        assert list((Path(self.root) / "var" / "events" / "dead").glob("evt_*"))  # waiting on disk, not in memory
