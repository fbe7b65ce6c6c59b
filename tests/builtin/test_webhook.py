"""The webhook wire format (JSON body, Standard Webhooks signatures) and WebhookGateway against StubTreq."""

from __future__ import annotations

import base64
import email
import hashlib
import hmac
import json
import re
import time
from email import policy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mailgate.builtin.webhook import WebhookGateway
from mailgate.config import parse_config
from mailgate.core.session import Envelope
from mailgate.core.errors import PermanentFailure, TemporaryFailure
from mailgate.builtin.webhook_payload import delivery_id, json_body, signature_headers

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENVELOPE = Envelope(mail_from="bob@remote.test", rcpt_to=["support@example.test"])


def payload(message: bytes, envelope: Envelope = ENVELOPE) -> dict[str, Any]:
    return json.loads(json_body(message, envelope, "msg_test"))


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# --- JSON body ---------------------------------------------------------------


def test_plain_text_message() -> None:
    doc = payload(crlf(
        "Received: from a by mx.example.test (mailgate) with ESMTP id Q1;\n\tMon, 1 Jan 2024 00:00:00 +0000\n"
        "From: Bob <bob@remote.test>\nTo: support@example.test, Carol <carol@example.test>\n"
        "Cc: dave@example.test\nSubject: Printer on fire\nDate: Tue, 02 Jan 2024 10:30:00 +0100\n"
        "Message-ID: <abc@remote.test>\n\nIt is on fire.\nPlease help.\n"
    ))
    assert doc["id"] == "msg_test"
    assert doc["envelope"] == {"mail_from": "bob@remote.test", "rcpt_to": ["support@example.test"]}
    assert doc["subject"] == "Printer on fire"
    assert doc["from"] == "Bob <bob@remote.test>"
    assert doc["to"] == ["support@example.test", "Carol <carol@example.test>"]
    assert doc["cc"] == ["dave@example.test"]
    assert doc["date"] == "2024-01-02T10:30:00+01:00"
    assert doc["message_id"] == "<abc@remote.test>"
    assert doc["text"] == "It is on fire.\nPlease help.\n"
    assert doc["html"] is None
    assert doc["attachments"] == []
    assert [name for name, _ in doc["headers"]] == ["Received", "From", "To", "Cc", "Subject", "Date", "Message-ID"]
    # Unfolded, the fold's line break and tab becoming one space.
    assert doc["headers"][0][1] == "from a by mx.example.test (mailgate) with ESMTP id Q1; Mon, 1 Jan 2024 00:00:00 +0000"


def test_absent_fields_are_null_or_empty() -> None:
    doc = payload(b"\r\njust a body\r\n")
    assert (doc["subject"], doc["from"], doc["date"], doc["message_id"], doc["html"]) == (None,) * 5
    assert (doc["to"], doc["cc"], doc["headers"], doc["attachments"]) == ([], [], [], [])
    assert doc["text"] == "just a body\n"


def test_multipart_alternative_with_html() -> None:
    doc = payload(crlf(
        'Subject: hi\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b1"\n\n'
        "--b1\nContent-Type: text/plain; charset=utf-8\n\nplain version\n"
        "--b1\nContent-Type: text/html; charset=utf-8\n\n<p>html version</p>\n--b1--\n"
    ))
    assert doc["text"] == "plain version"
    assert doc["html"] == "<p>html version</p>"
    assert doc["attachments"] == []


def test_quoted_printable_latin1_and_base64_utf8_bodies() -> None:
    html = base64.b64encode("<p>Grüße aus Köln — ✓</p>".encode("utf-8")).decode()
    doc = payload(crlf(
        'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b1"\n\n'
        "--b1\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
        "Gr=FC=DFe aus K=F6ln, ein sehr langer Satz, der umbrochen =\nwird.\n"
        f"--b1\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: base64\n\n{html}\n--b1--\n"
    ))
    assert doc["text"] == "Grüße aus Köln, ein sehr langer Satz, der umbrochen wird."
    assert doc["html"] == "<p>Grüße aus Köln — ✓</p>"


def test_rfc2047_headers_are_decoded() -> None:
    doc = payload(crlf(
        "From: =?utf-8?b?SsO2cmcgTcO8bGxlcg==?= <joerg@remote.test>\n"
        "To: =?iso-8859-1?q?Ren=E9?= <rene@example.test>\n"
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?q?_aus_K=C3=B6ln?=\n"
        "X-Note: =?iso-8859-15?q?=A4uro?=\n\nbody\n"
    ))
    assert doc["from"] == "Jörg Müller <joerg@remote.test>"
    assert doc["to"] == ["René <rene@example.test>"]
    assert doc["subject"] == "Grüße aus Köln"
    assert ["X-Note", "€uro"] in doc["headers"]
    assert ["Subject", "Grüße aus Köln"] in doc["headers"]


def test_attachments_round_trip_through_base64() -> None:
    pdf = bytes(range(256)) * 3
    encoded = base64.encodebytes(pdf).decode().replace("\n", "\r\n")
    doc = payload(crlf(
        'Subject: report\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="m"\n\n'
        '--m\nContent-Type: multipart/alternative; boundary="a"\n\n'
        "--a\nContent-Type: text/plain\n\nsee attached\n"
        "--a\nContent-Type: text/html\n\n<b>see attached</b>\n--a--\n"
        "--m\nContent-Type: application/pdf\n"
        "Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\n"
        "Content-Transfer-Encoding: base64\n\n"
    ) + encoded.encode() + crlf(
        '--m\nContent-Type: text/csv; name="=?utf-8?q?z=C3=A4hler.csv?="\nContent-Disposition: attachment\n\n'
        "a,b\n1,2\n--m--\n"
    ))
    assert doc["text"] == "see attached"
    assert doc["html"] == "<b>see attached</b>"
    first, second = doc["attachments"]
    assert first["filename"] == "résumé.pdf"
    assert first["content_type"] == "application/pdf"
    assert first["size"] == len(pdf)
    assert base64.b64decode(first["content"]) == pdf
    assert second["filename"] == "zähler.csv"
    assert second["content_type"] == "text/csv"
    assert base64.b64decode(second["content"]) == b"a,b\r\n1,2"
    assert second["size"] == len(b"a,b\r\n1,2")


def test_attached_message_is_one_attachment() -> None:
    doc = payload(crlf(
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="m"\n\n'
        "--m\nContent-Type: text/plain\n\nforwarding this\n"
        "--m\nContent-Type: message/rfc822\n\nSubject: inner\nFrom: x@y.test\n\ninner body\n--m--\n"
    ))
    assert doc["text"] == "forwarding this"
    [attached] = doc["attachments"]
    assert attached["content_type"] == "message/rfc822"
    assert b"Subject: inner" in base64.b64decode(attached["content"])


def test_date_in_other_zones_and_invalid_dates() -> None:
    assert payload(b"Date: Wed, 31 Jan 2024 23:59:59 -0800\r\n\r\nx")["date"] == "2024-01-31T23:59:59-08:00"
    assert payload(b"Date: Wed, 31 Jan 2024 23:59:59 GMT\r\n\r\nx")["date"] == "2024-01-31T23:59:59+00:00"
    assert payload(b"Date: yesterday-ish\r\n\r\nx")["date"] is None


MALFORMED = [
    b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nh\xe9llo\r\n",
    b"Subject: =?x-bogus?q?abc?= =?utf-8?b?!!!?=\r\nFrom: <<<@@@>>>, \"unterminated\r\nTo: ,,,@,\r\n\r\nx",
    b"Subject: raw 8-bit caf\xc3\xa9 and latin \xe9\r\n\r\nbody \xff\xfe\r\n",
    b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter at all\r\n",
    b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nnever closed',
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64===\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nbody\r\n",
    b"Content-Type: application/octet-stream; name*=bogus''%ZZ%\r\nContent-Disposition: attachment\r\n\r\nx",
    b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\nMessage-ID:\r\n\r\n",
    b"\x00\x01\x02 not a message at all \xff",
    b"",
    b"Header-Without-Colon\r\n: empty name\r\n\r\n",
]


@pytest.mark.parametrize("message", MALFORMED)
def test_malformed_mail_never_crashes(message: bytes) -> None:
    body = json_body(message, ENVELOPE, "msg_test")
    doc = json.loads(body.decode("utf-8"))  # always valid UTF-8 JSON
    assert doc["id"] == "msg_test"
    assert isinstance(doc["headers"], list) and isinstance(doc["attachments"], list)


MIME_PIECES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: text/plain; charset=", b"--b\r\n",
    b"--b--\r\n", b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"=?utf-8?q?", b"=?x?b?", b"?=", b"\r\n", b"\r\n ", b": ", b"Subject", b"From: ", b"To: <", b"@", b"\xe9",
    b"\xc3", b"=E9", b"Content-Disposition: attachment; filename*=", b"''%C3", b"message/rfc822", b"Date: 1 Jan",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(MIME_PIECES, st.binary(max_size=8)), max_size=40))
def test_any_bytes_give_valid_json(pieces: list[bytes]) -> None:
    doc = json.loads(json_body(b"".join(pieces), ENVELOPE, "msg_fuzz").decode("utf-8"))
    assert doc["id"] == "msg_fuzz"


def test_unknown_charset_falls_back_to_utf8_or_latin1() -> None:
    assert payload(MALFORMED[0])["text"] == "héllo\n"
    assert payload(b"Content-Type: text/plain\r\n\r\ncaf\xc3\xa9\r\n")["text"] == "café\n"  # undeclared 8-bit


def test_delivery_id_is_stable_and_distinct() -> None:
    message = b"Received: by mx id Q1\r\n\r\nbody\r\n"
    first = delivery_id(message, "webhook:tickets", ["b@x.test", "a@x.test"])
    assert first == delivery_id(message, "webhook:tickets", ["a@x.test", "b@x.test"])
    assert first.startswith("msg_")
    assert first != delivery_id(message, "webhook:other", ["a@x.test", "b@x.test"])
    assert first != delivery_id(message.replace(b"Q1", b"Q2"), "webhook:tickets", ["a@x.test", "b@x.test"])


# --- signatures --------------------------------------------------------------


def test_whsec_signature_verifies_with_standardwebhooks() -> None:
    body = json_body(b"Subject: hi\r\n\r\nhello\r\n", ENVELOPE, "msg_abc")
    headers = signature_headers("msg_abc", int(time.time()), body, [WHSEC])
    assert headers["webhook-id"] == "msg_abc"
    assert Webhook(WHSEC).verify(body, headers)["subject"] == "hi"
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(body + b" ", headers)


def test_plain_string_secret_is_used_as_utf8_bytes() -> None:
    body, now = b'{"id": "msg_abc"}', int(time.time())
    headers = signature_headers("msg_abc", now, body, ["pässword"])
    expected = hmac.new("pässword".encode(), f"msg_abc.{now}.".encode() + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()
    Webhook("pässword".encode()).verify(body, headers)  # the library takes raw key bytes too


def test_rotation_signs_with_every_secret() -> None:
    old, new = WHSEC, "whsec_" + base64.b64encode(b"a brand new key!").decode()
    body = b'{"id": "msg_rot"}'
    headers = signature_headers("msg_rot", int(time.time()), body, [old, new])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(sig.startswith("v1,") for sig in headers["webhook-signature"].split(" "))
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"some other key").decode()).verify(body, headers)


# --- WebhookGateway, over StubTreq --------------------------------------------


class Receiver(Resource):
    """Answers POSTs from a script of status codes; records each request."""

    isLeaf = True

    def __init__(self, codes: list[int] | None = None, hang: bool = False) -> None:
        super().__init__()
        self.codes = codes or [200]
        self.hang = hang
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def render_POST(self, request: Any) -> Any:
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((headers, request.content.read()))
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.codes.pop(0) if len(self.codes) > 1 else self.codes[0])
        return b"thanks"


def gateway_for(receiver: Receiver, **webhook: Any) -> tuple[WebhookGateway, Clock, StubTreq]:
    table = {"name": "tickets", "match": ["support@example.test", "*@hooks.example.test"],
             "url": "http://receiver.test/inbound", "secret": WHSEC, **webhook}
    config = parse_config({"listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
                           "webhook": [table]})
    clock, stub = Clock(), StubTreq(receiver)
    clock.advance(time.time())  # signatures carry a timestamp standardwebhooks checks
    plugin = WebhookGateway(reactor=clock, http=stub)
    plugin.mailgate_configure(config)
    return plugin, clock, stub


MESSAGE = b"Received: by mx.example.test id Q1\r\nSubject: help\r\n\r\nhello\r\n"


class WebhookGatewayTests(SynchronousTestCase):
    def deliver(self, plugin: WebhookGateway, stub: StubTreq, inline: bool = False) -> Deferred:
        hook = plugin.mailgate_deliver_inline if inline else plugin.mailgate_deliver
        d = Deferred.fromCoroutine(hook("webhook:tickets", ENVELOPE, MESSAGE))
        stub.flush()
        return d

    def test_routes_exact_addresses_and_whole_domains(self) -> None:
        plugin, _, _ = gateway_for(Receiver())
        self.assertEqual(plugin.mailgate_route("support@example.test"), "webhook:tickets")
        self.assertEqual(plugin.mailgate_route("Anyone@Hooks.Example.Test"), "webhook:tickets")
        self.assertIsNone(plugin.mailgate_route("alice@example.test"))
        self.assertIsNone(plugin.mailgate_route("support@example.test.evil"))
        self.assertTrue(plugin.mailgate_verify("x@hooks.example.test"))

    def test_queued_2xx_posts_signed_json(self) -> None:
        receiver = Receiver([204])
        plugin, _, stub = gateway_for(receiver)
        self.assertIs(self.successResultOf(self.deliver(plugin, stub)), True)
        [(headers, body)] = receiver.requests
        self.assertEqual(headers["content-type"], "application/json")
        document = Webhook(WHSEC).verify(body, headers)
        self.assertEqual(document["id"], headers["webhook-id"])
        self.assertEqual(document["subject"], "help")

    def test_raw_format_posts_the_message(self) -> None:
        receiver = Receiver()
        plugin, _, stub = gateway_for(receiver, format="raw")
        self.successResultOf(self.deliver(plugin, stub))
        [(headers, body)] = receiver.requests
        self.assertEqual((headers["content-type"], body), ("message/rfc822", MESSAGE))
        Webhook(WHSEC).verify(body, headers, json_parse=False)

    def test_retried_statuses_are_temporary(self) -> None:
        for code in (408, 429, 500, 502, 503, 301):
            plugin, _, stub = gateway_for(Receiver([code]))
            failure = self.failureResultOf(self.deliver(plugin, stub), TemporaryFailure)
            self.assertIn(f"HTTP {code}", failure.value.reason)

    def test_other_4xx_is_permanent_and_names_the_status(self) -> None:
        for code in (400, 403, 404, 410, 422):
            plugin, _, stub = gateway_for(Receiver([code]))
            failure = self.failureResultOf(self.deliver(plugin, stub), PermanentFailure)
            self.assertIn(f"HTTP {code}", failure.value.text)

    def test_timeout_is_temporary(self) -> None:
        plugin, clock, stub = gateway_for(Receiver(hang=True), timeout="5s")
        d = self.deliver(plugin, stub)
        self.assertNoResult(d)
        clock.advance(5)
        failure = self.failureResultOf(d, TemporaryFailure)
        self.assertEqual((failure.value.code, failure.value.enhanced), (451, "4.4.1"))
        self.assertIn("TimeoutError", failure.value.reason)

    def test_same_id_on_every_attempt(self) -> None:
        receiver = Receiver([500, 200])
        plugin, _, stub = gateway_for(receiver)
        self.failureResultOf(self.deliver(plugin, stub), TemporaryFailure)
        self.successResultOf(self.deliver(plugin, stub))
        ids = [headers["webhook-id"] for headers, _ in receiver.requests]
        self.assertEqual(len(ids), 2)
        self.assertEqual(ids[0], ids[1])

    def test_other_schemes_and_unknown_names(self) -> None:
        plugin, _, _ = gateway_for(Receiver())
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(
            plugin.mailgate_deliver("smtp:127.0.0.1:25", ENVELOPE, MESSAGE))))
        self.failureResultOf(Deferred.fromCoroutine(
            plugin.mailgate_deliver("webhook:nobody", ENVELOPE, MESSAGE)), PermanentFailure)
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(  # left to the queue, which bounces
            plugin.mailgate_deliver_inline("webhook:nobody", ENVELOPE, MESSAGE))))

    def test_inline_only_for_sync_webhooks(self) -> None:
        receiver = Receiver()
        plugin, _, stub = gateway_for(receiver, mode="queued")
        self.assertIsNone(self.successResultOf(self.deliver(plugin, stub, inline=True)))
        self.assertEqual(receiver.requests, [])

    def test_sync_replies(self) -> None:
        expected = {200: None, 400: (550, "5.7.1"), 429: (451, "4.4.1"), 503: (451, "4.4.1")}
        for code, reply in expected.items():
            plugin, _, stub = gateway_for(Receiver([code]), mode="sync")
            d = self.deliver(plugin, stub, inline=True)
            if reply is None:
                self.assertIs(self.successResultOf(d), True)
                continue
            error = self.failureResultOf(d).value
            self.assertEqual((error.code, error.enhanced), reply)
            self.assertIn(f"HTTP {code}", error.text)

    def test_connection_refused_is_temporary(self) -> None:
        plugin, _, _ = gateway_for(Receiver(), mode="sync")
        plugin._http = BrokenClient()
        d = Deferred.fromCoroutine(plugin.mailgate_deliver_inline("webhook:tickets", ENVELOPE, MESSAGE))
        error = self.failureResultOf(d, TemporaryFailure).value
        self.assertEqual(str(error.reply), "451 4.4.1 Webhook unreachable, try again later")
        self.assertIn("ConnectionRefusedError", error.reason)


class BrokenClient:
    def post(self, *args: Any, **kwargs: Any) -> Deferred:
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        return fail(ConnectionRefusedError("127.0.0.1:9"))


class FlakyHTTP:
    """An HTTP client whose every POST fails the way Twisted reports `failure`."""

    def __init__(self, failure: Exception) -> None:
        self.failure, self.posts = failure, 0

    def post(self, *args: Any, **kwargs: Any) -> Deferred:
        self.posts += 1
        d: Deferred = Deferred()
        d.errback(self.failure)
        return d


class StaleConnectionTests(SynchronousTestCase):
    def attempt(self, failure: Exception) -> tuple[FlakyHTTP, Any]:
        config = parse_config({"listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
                               "webhook": [{"name": "tickets", "match": ["support@example.test"],
                                            "url": "http://receiver.test/inbound", "secret": WHSEC}]})
        http = FlakyHTTP(failure)
        plugin = WebhookGateway(reactor=Clock(), http=http)
        plugin.mailgate_configure(config)
        d = Deferred.fromCoroutine(plugin.mailgate_deliver("webhook:tickets", ENVELOPE, MESSAGE))
        return http, self.failureResultOf(d, TemporaryFailure)

    def test_a_dead_pooled_connection_is_retried_once(self) -> None:
        from twisted.python.failure import Failure
        from twisted.web._newclient import ResponseNeverReceived

        http, _ = self.attempt(ResponseNeverReceived([Failure(ConnectionResetError())]))
        self.assertEqual(http.posts, 2)

    def test_our_own_timeout_is_never_retried(self) -> None:
        """A cancelled request looks like a dead connection; posting again would
        deliver twice to a receiver that is merely slow."""
        from twisted.internet.defer import CancelledError
        from twisted.python.failure import Failure
        from twisted.web._newclient import ResponseNeverReceived

        http, _ = self.attempt(ResponseNeverReceived([Failure(CancelledError())]))
        self.assertEqual(http.posts, 1)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80).filter(lambda t: "=?" not in t))
def test_plain_text_headers_read_as_the_email_package_reads_them(text: str) -> None:
    """Text headers skip the parser (it costs a class per header); the result must not change."""
    message = f"Received: {text}\r\nSubject: {text}\r\nX-Note: a\r\n b {text}\r\n\r\nbody\r\n".encode()
    document = json.loads(json_body(message, Envelope(mail_from="a@example.test", rcpt_to=["b@x.test"]), "msg_x"))
    reference = email.message_from_bytes(message, policy=policy.default)
    expected = [
        [name, str(policy.default.header_fetch_parse(name, re.sub(r"[ \t]*\r?\n[ \t]*", " ", raw)))]
        for name, raw in reference.raw_items()
    ]
    assert document["headers"] == expected
    assert document["subject"] == expected[1][1].strip()


def test_json_authentication_is_read_from_our_authentication_results_field() -> None:
    message = (b"Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@example.test;\r\n"
               b"\tdkim=pass header.d=example.test header.s=s1;\r\n\tdmarc=pass (p=none) header.from=example.test\r\n"
               b"Authentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\nhello\r\n")
    envelope = Envelope(mail_from="a@example.test", rcpt_to=["b@x.test"])
    document = json.loads(json_body(message, envelope, "msg_x", "mx.example.test"))
    assert document["authentication"] == {
        "spf": "pass", "dkim": [{"domain": "example.test", "selector": "s1", "result": "pass"}], "dmarc": "pass"}
    assert json.loads(json_body(message, envelope, "msg_x", "elsewhere.test"))["authentication"] is None
    assert json.loads(json_body(message, envelope, "msg_x"))["authentication"] is None  # checks off
