"""Webhooks end to end: a real `twistd mailgate` POSTing to a real HTTP receiver.

The receiver (twisted.web) runs in this process, on the reactor, so these are
trial TestCases and every wait is an asynchronous poll. In queued mode mail
is submitted with a short blocking smtplib call (mailgate answers 250 before
it talks to the receiver); in sync mode the receiver must answer while the
client waits at DATA, so that smtplib call runs in a thread.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support.gateway import BIN, Gateway, STARTUP_DEADLINE_SECONDS, eventually, free_port, gateway_config
from tests.support.http_receiver import Receiver, listen

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ALICE = "alice@example.test"  # a local user: sends, and receives the bounces
TICKETS = "new@hooks.example.test"

MESSAGE = (
    "From: =?utf-8?q?Alice_Lid=C3=A9l?= <alice@example.test>\r\n"
    "To: new@hooks.example.test\r\n"
    "Subject: =?utf-8?q?Dr=C3=BCcker_kaputt?=\r\n"
    "Date: Tue, 02 Jan 2024 10:30:00 +0100\r\n"
    "Message-ID: <printer-1@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="m"\r\n'
    "\r\n"
    "--m\r\n"
    'Content-Type: multipart/alternative; boundary="a"\r\n'
    "\r\n"
    "--a\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Der Drucker im 2. Stock druckt nur noch Stre=EF=BF=BDfen.\r\n"
    "--a\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    + base64.b64encode("<p>Drucker: Streifen überall</p>".encode()).decode() + "\r\n"
    "--a--\r\n"
    "--m\r\n"
    'Content-Type: image/png; name="scan.png"\r\n'
    'Content-Disposition: attachment; filename="scan.png"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(200))).decode() + "\r\n"
    "--m--\r\n"
).encode("ascii")


def send(port: int, recipients: list[str], message: bytes = MESSAGE, sender: str = ALICE) -> tuple[int, bytes]:
    """One SMTP transaction; the reply to DATA (smtplib, blocking)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            assert code == 250, (recipient, code, reply)
        return client.data(message)


class WebhookGatewayTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        # Not self.mktemp(): under pytest it writes into the working tree.
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-webhook-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        (self.root / "etc").mkdir()

    # --- helpers -----------------------------------------------------------

    def receive(self, codes: list[int], hang: bool = False) -> Receiver:
        receiver = Receiver(codes, hang)
        self.url = listen(self, receiver, path="/inbound")
        return receiver

    async def start(self, extra_config: str = "", **webhook: Any) -> Gateway:
        """A gateway with one [[webhook]] for *@hooks.example.test, started without blocking the reactor."""
        table = {"name": "tickets", "match": ["*@hooks.example.test"], "url": self.url,
                 "secret": SECRET, "timeout": "5s", **webhook}
        extra = '[relay]\nretry_intervals = ["1s", "2s"]\n\n[[webhook]]\n' + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in table.items()
        ) + extra_config
        ports = {"smtp": free_port()}
        config = self.root / "mailgate.toml"
        config.write_text(gateway_config(ports, extra))
        gateway = Gateway(self.root, config, ports)
        gateway.add_user(ALICE)
        gateway.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(gateway.log_path),
             "mailgate", "--config", str(config)],
            cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.stop, gateway)  # LIFO: before the receiver closes
        await eventually(gateway._started, "mailgate to start", STARTUP_DEADLINE_SECONDS)
        return gateway

    async def stop(self, gateway: Gateway) -> None:
        process = gateway.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await eventually(lambda: process.poll() is not None, "mailgate to stop", 20)
            except AssertionError:
                process.kill()
                process.wait()
                raise
        process.stdout.close()
        self.assertNotIn("Traceback", gateway.log())
        self.assertNotIn("Unhandled error", gateway.log())

    def queued(self) -> list[Path]:
        env = self.root / "var" / "queue" / "env"
        return list(env.iterdir()) if env.is_dir() else []

    def verify(self, request: dict[str, Any], json_parse: bool = True) -> Any:
        """What a receiver does: check the Standard Webhooks signature with the PyPI library."""
        return Webhook(SECRET).verify(request["body"], request["headers"], json_parse=json_parse)

    # --- queued mode ------------------------------------------------------------

    async def test_mail_arrives_as_signed_json(self) -> None:
        receiver = self.receive([200])
        gateway = await self.start()
        code, reply = send(gateway.ports["smtp"], [TICKETS])
        self.assertEqual(code, 250, reply)
        [request] = await eventually(lambda: receiver.requests, "the webhook POST")
        self.assertEqual(request["path"], "/inbound")
        self.assertEqual(request["headers"]["content-type"], "application/json")
        document = self.verify(request)
        self.assertEqual(document["id"], request["headers"]["webhook-id"])
        self.assertLess(abs(int(request["headers"]["webhook-timestamp"]) - time.time()), 30)
        self.assertEqual(document["envelope"], {"mail_from": ALICE, "rcpt_to": [TICKETS]})
        self.assertEqual(document["subject"], "Drücker kaputt")
        self.assertEqual(document["from"], "Alice Lidél <alice@example.test>")
        self.assertEqual(document["to"], [TICKETS])
        self.assertEqual(document["cc"], [])
        self.assertEqual(document["date"], "2024-01-02T10:30:00+01:00")
        self.assertEqual(document["message_id"], "<printer-1@example.test>")
        self.assertEqual(document["text"], "Der Drucker im 2. Stock druckt nur noch Stre\u00ef\u00bf\u00bdfen.")
        self.assertEqual(document["html"], "<p>Drucker: Streifen überall</p>")
        [attachment] = document["attachments"]
        self.assertEqual((attachment["filename"], attachment["content_type"]), ("scan.png", "image/png"))
        self.assertEqual(base64.b64decode(attachment["content"]), b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
        self.assertEqual(attachment["size"], 208)
        name, value = document["headers"][0]
        self.assertEqual(name, "Received")
        self.assertIn("by mx.example.test (mailgate)", value)
        await eventually(lambda: not self.queued(), "the queue to empty")
        self.assertEqual(len(receiver.requests), 1)

    async def test_500s_are_retried_with_the_same_id(self) -> None:
        receiver = self.receive([500, 500, 200])
        gateway = await self.start()
        self.assertEqual(send(gateway.ports["smtp"], [TICKETS])[0], 250)
        await eventually(lambda: len(receiver.requests) >= 3, "three attempts", 20)
        await eventually(lambda: not self.queued(), "the queue to empty")
        ids = {request["headers"]["webhook-id"] for request in receiver.requests}
        self.assertEqual(len(ids), 1)
        for request in receiver.requests:
            self.verify(request)
        first, second, third = (request["at"] for request in receiver.requests)
        self.assertGreaterEqual(second - first, 0.9)  # relay.retry_intervals, not a tight loop
        self.assertGreaterEqual(third - second, 1.8)
        await deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(len(receiver.requests), 3)  # delivered: never posted again
        self.assertEqual(gateway.new_messages(ALICE), [])  # and no bounce

    async def test_permanent_400_bounces_naming_the_status(self) -> None:
        receiver = self.receive([400])
        gateway = await self.start()
        self.assertEqual(send(gateway.ports["smtp"], [TICKETS])[0], 250)
        [bounce] = await eventually(lambda: gateway.new_messages(ALICE), "a bounce to alice")
        raw = bounce.read_bytes()
        self.assertTrue(raw.startswith(b"Return-Path: <>\n"), raw[:100])
        self.assertIn(b"HTTP 400", raw)
        self.assertIn(TICKETS.encode(), raw)
        self.assertEqual(len(receiver.requests), 1)  # not retried
        await eventually(lambda: not self.queued(), "the queue to empty")

    async def test_raw_format_posts_the_message(self) -> None:
        receiver = self.receive([202])
        gateway = await self.start(format="raw")
        self.assertEqual(send(gateway.ports["smtp"], [TICKETS])[0], 250)
        [request] = await eventually(lambda: receiver.requests, "the webhook POST")
        self.assertEqual(request["headers"]["content-type"], "message/rfc822")
        self.verify(request, json_parse=False)
        self.assertTrue(request["body"].startswith(b"Received: "))
        self.assertTrue(request["body"].endswith(MESSAGE))
        self.assertTrue(request["headers"]["webhook-id"].startswith("msg_"))

    # --- sync mode ---------------------------------------------------------------

    async def sync_reply(self, codes: list[int], hang: bool = False, **webhook: Any) -> tuple[Receiver, int, bytes]:
        receiver = self.receive(codes, hang)
        gateway = await self.start(mode="sync", **webhook)
        # In a thread: the receiver, on this reactor, answers while smtplib waits at DATA.
        code, reply = await deferToThread(send, gateway.ports["smtp"], [TICKETS])
        return receiver, code, reply

    async def test_sync_200_is_250(self) -> None:
        receiver, code, reply = await self.sync_reply([200])
        self.assertEqual(code, 250, reply)
        [request] = receiver.requests
        self.assertEqual(self.verify(request)["subject"], "Drücker kaputt")
        self.assertEqual(self.queued(), [])

    async def test_sync_400_is_550(self) -> None:
        receiver, code, reply = await self.sync_reply([400])
        self.assertEqual(code, 550, reply)
        self.assertTrue(reply.startswith(b"5.7.1 "), reply)
        self.assertIn(b"HTTP 400", reply)
        self.assertEqual(self.queued(), [])

    async def test_sync_503_is_451_and_nothing_is_queued(self) -> None:
        receiver, code, reply = await self.sync_reply([503])
        self.assertEqual(code, 451, reply)
        self.assertTrue(reply.startswith(b"4.4.1 "), reply)
        self.assertEqual(len(receiver.requests), 1)
        self.assertEqual(self.queued(), [])
        await deferLater(reactor, 1.5, lambda: None)  # past the first retry interval
        self.assertEqual(len(receiver.requests), 1)

    async def test_sync_500_leaves_no_list_copy_behind(self) -> None:
        """One transaction to a list and a sync webhook: the webhook's 500 makes the
        client hear 451, and no list member got a copy, local or queued (issue #11)."""
        receiver = self.receive([500])
        team = '\n[lists."team@example.test"]\nmembers = ["alice@example.test", "carol@remote.test"]\n'
        gateway = await self.start(extra_config=team, mode="sync")
        code, reply = await deferToThread(send, gateway.ports["smtp"], ["team@example.test", TICKETS])
        self.assertEqual(code, 451, reply)
        self.assertEqual(len(receiver.requests), 1)
        self.assertEqual(gateway.new_messages(ALICE), [])
        self.assertEqual(self.queued(), [])

    async def test_sync_timeout_is_451(self) -> None:
        started = time.monotonic()
        receiver, code, reply = await self.sync_reply([200], hang=True, timeout="1s")
        self.assertEqual(code, 451, reply)
        self.assertTrue(reply.startswith(b"4.4.1 "), reply)
        self.assertEqual(len(receiver.requests), 1)
        self.assertEqual(self.queued(), [])
        self.assertLess(time.monotonic() - started, 20)
