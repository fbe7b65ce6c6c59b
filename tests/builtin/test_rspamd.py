"""[rspamd]: messages scanned by a real rspamd; an rspamd that is down, hangs or talks nonsense fails open.

trial TestCases on the running reactor. One private rspamd serves the whole
RealRspamdTests class (tests/support/rspamd.py); the failure cases need none.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from mailgate import MessageChange
from mailgate.builtin.rspamd import RspamdScanner, request_headers, verdict
from mailgate.config import parse_config
from mailgate.core.session import Envelope, Session
from tests.support.gateway import eventually, free_port
from tests.support.http_receiver import listen
from tests.support.logs import LogLines
from tests.support.rspamd import GTUBE, NO_RSPAMD, RSPAMD, SPAMMY_HEADER, RspamdServer

SESSION = Session(peer="127.0.0.1", helo="client.example.test", listener="mx")
ENVELOPE = Envelope(mail_from="alice@example.test", rcpt_to=["bob@example.test", "carol@example.test"],
                    session=SESSION)


def message(body: str = "Shall we have lunch on Friday?", *headers: str) -> bytes:
    lines = ["From: Alice <alice@example.test>", "To: Bob <bob@example.test>", "Subject: lunch",
             "Date: Tue, 02 Jan 2024 10:30:00 +0100", "Message-ID: <lunch-1@example.test>", *headers, "", body, ""]
    return "\r\n".join(lines).encode()


def scanner(url: str, **settings: Any) -> RspamdScanner:
    plugin = RspamdScanner(reactor=reactor)
    plugin.mailgate_configure(parse_config({
        "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
        "rspamd": {"url": url, **settings},
    }))
    return plugin


class ScanningTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.logs = LogLines(self)

    async def scan(self, plugin: RspamdScanner, data: bytes, session: Session = SESSION) -> Any:
        self.addCleanup(plugin.close)
        answer = plugin.mailgate_message(session, ENVELOPE, data)
        return await answer if isinstance(answer, Deferred) else answer


@pytest.mark.skipif(RSPAMD is None, reason=NO_RSPAMD)
class RealRspamdTests(ScanningTests):
    rspamd: RspamdServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.rspamd = RspamdServer()
        cls.rspamd.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.rspamd.stop()

    async def test_gtube_is_refused(self) -> None:
        plugin = scanner(self.rspamd.url)
        self.assertEqual(await self.scan(plugin, message(GTUBE)), "550 5.7.1 Gtube pattern")
        self.assertEqual(plugin.unscanned, 0)

    async def test_a_scored_message_is_marked(self) -> None:
        answer = await self.scan(scanner(self.rspamd.url), message("Hello", f"{SPAMMY_HEADER}: yes"))
        self.assertIsInstance(answer, MessageChange)
        (name, value), (score_name, score) = answer.headers
        self.assertEqual((name, value, score_name), ("X-Spam", "Yes", "X-Spam-Score"))
        self.assertRegex(score, r"^\d+\.\d\d$")
        self.assertTrue(8.0 <= float(score) < 15.0, score)
        self.assertIsNone(answer.message)

    async def test_ham_passes_untouched(self) -> None:
        plugin = scanner(self.rspamd.url)
        self.assertIsNone(await self.scan(plugin, message()))
        self.assertEqual(plugin.unscanned, 0)

    async def test_the_thresholds_are_ours(self) -> None:
        """The same scored message: refused with reject_score under its score, untouched over it."""
        spammy = message("Hello", f"{SPAMMY_HEADER}: yes")
        refused = await self.scan(scanner(self.rspamd.url, reject_score=7.5), spammy)
        self.assertEqual(refused, "550 5.7.1 Spam message rejected")
        self.assertIsNone(await self.scan(scanner(self.rspamd.url, header_score=50.0), spammy))

    async def test_rspamd_hears_the_envelope_and_the_client(self) -> None:
        envelope = Envelope(mail_from="alice@example.test", rcpt_to=["bob@example.test"], session=SESSION)
        envelope.queue_id = "Q4711"  # type: ignore[attr-defined]  # when the session knows one
        session = Session(peer="127.0.0.1", helo="client.example.test", user="alice@example.test")
        plugin = scanner(self.rspamd.url)
        self.addCleanup(plugin.close)
        await plugin.mailgate_message(session, envelope, message())
        [line] = await eventually(
            lambda: [line for line in self.rspamd.log().splitlines() if "qid: <Q4711>" in line], "rspamd's log line")
        for part in ("ip: 127.0.0.1", "user: alice@example.test", "from: <alice@example.test>"):
            self.assertIn(part, line)


class FailOpenTests(ScanningTests):
    """No rspamd needed: what stands in its place never gives a verdict."""

    async def unscanned_after(self, url: str, timeout: str, error: str) -> float:
        """Scan GTUBE at `url`: None, counted, one log line naming `error`; the seconds it took."""
        plugin = scanner(url, timeout=timeout)
        started = time.monotonic()
        self.assertIsNone(await self.scan(plugin, message(GTUBE)))
        elapsed = time.monotonic() - started
        self.assertEqual(plugin.unscanned, 1)
        [line] = self.logs.matching("rspamd: ")
        self.assertIn("accepted unscanned", line)
        self.assertIn(error, line)
        return elapsed

    async def test_rspamd_down_means_unscanned_with_one_log_line(self) -> None:
        elapsed = await self.unscanned_after(f"http://127.0.0.1:{free_port()}", "5s", "ConnectionRefusedError")
        self.assertLess(elapsed, 5.0)

    async def test_a_hanging_rspamd_means_unscanned_after_the_timeout(self) -> None:
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # accepts, never answers
        self.addCleanup(port.stopListening)
        elapsed = await self.unscanned_after(f"http://127.0.0.1:{port.getHost().port}", "0.5s", "TimeoutError")
        self.assertGreaterEqual(elapsed, 0.45)

    async def test_garbage_and_errors_mean_unscanned(self) -> None:
        answers = [(200, b"<html>not rspamd</html>"), (200, b'{"score": "high", "action": "reject"}'),
                   (200, b"[1, 2]"), (500, b'{"score": 99, "action": "reject"}')]
        plugin = scanner(listen(self, Scripted(answers)))
        for _ in answers:
            self.assertIsNone(await self.scan(plugin, message(GTUBE)))
        self.assertEqual(plugin.unscanned, 4)
        self.assertEqual(len(self.logs.matching("accepted unscanned")), 4)

    async def test_the_refusal_is_one_printable_line(self) -> None:
        text = "Go away\r\n250 ok \u00e9"
        answer = json.dumps({"score": 3.0, "action": "reject", "messages": {"smtp_message": text}}).encode()
        plugin = scanner(listen(self, Scripted([(200, answer)])))
        self.assertEqual(await self.scan(plugin, message()), "550 5.7.1 Go away 250 ok")

    async def test_off_by_default(self) -> None:
        plugin = RspamdScanner(reactor=reactor)
        plugin.mailgate_configure(parse_config({"listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:1"}]}))
        self.assertIsNone(plugin.mailgate_message(SESSION, ENVELOPE, message(GTUBE)))


class VerdictTests(SynchronousTestCase):
    def test_request_headers_follow_rspamds_protocol(self) -> None:
        headers = request_headers(Session(peer="192.0.2.7", helo="mx.remote.test", user=None), ENVELOPE)
        self.assertEqual(headers.getRawHeaders("From"), ["alice@example.test"])
        self.assertEqual(headers.getRawHeaders("Rcpt"), ["bob@example.test", "carol@example.test"])
        self.assertEqual(headers.getRawHeaders("IP"), ["192.0.2.7"])
        self.assertEqual(headers.getRawHeaders("Helo"), ["mx.remote.test"])
        self.assertIsNone(headers.getRawHeaders("User"))
        self.assertIsNone(headers.getRawHeaders("Queue-Id"))
        self.assertEqual(request_headers(SESSION, Envelope(mail_from="")).getRawHeaders("From"), ["<>"])

    def test_a_verdict_needs_a_score_and_an_action(self) -> None:
        self.assertEqual(verdict(b'{"score": 20, "action": "reject", "messages": {"smtp_message": "no"}}'),
                         (20.0, "reject", "no"))
        self.assertEqual(verdict(b'{"score": 1, "action": "no action"}'), (1.0, "no action", ""))
        for body in (b"", b"{}", b'{"score": 1}', b'{"score": true, "action": "x"}', b'{"score": NaN, "action": "x"}'):
            with self.assertRaises(ValueError):
                verdict(body)


class Scripted(Resource):
    """Answers each POST with the next (status, body) of a script."""

    isLeaf = True

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        super().__init__()
        self.answers = list(answers)

    def render_POST(self, request: Any) -> bytes:
        code, body = self.answers.pop(0)
        request.setResponseCode(code)
        return body
