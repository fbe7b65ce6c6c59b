"""mailgate.testing.converse: the server's own session code drives every hook a plugin can implement."""

from __future__ import annotations

from typing import Any

from mailgate import MessageChange, hookimpl
from mailgate.testing import converse

CONFIG = {"domains": {"local": ["example.test"]}, "relay": {"transport": {"crm.test": "crm:inbox"}}}


class Probe:
    @hookimpl
    def mailgate_connect(self, session: Any) -> Any:
        return "554 5.7.1 not you" if session.peer == "192.0.2.66" else None

    @hookimpl
    def mailgate_helo(self, name: str) -> Any:
        return "550 5.7.1 bad name" if name == "bad.test" else None

    @hookimpl
    def mailgate_mail_from(self, sender: str) -> Any:
        return "550 5.7.1 blocked" if sender.endswith("@blocked.test") else None

    @hookimpl
    def mailgate_message(self, message: bytes) -> Any:
        if b"forbidden" in message:
            return "550 5.7.1 no such words here"
        return MessageChange(headers=[("X-Probe", "yes")])


def transaction(rcpt: str, body: str = "Subject: hi\r\n\r\nhello\r\n") -> bytes:
    return f"MAIL FROM:<a@remote.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n{body}.\r\n".encode()


def test_a_connect_refusal_replaces_the_greeting_and_closes() -> None:
    smtp = converse([Probe()], CONFIG, client_ip="192.0.2.66")
    assert smtp.greeting == ["554 5.7.1 not you"] and smtp.closed
    assert smtp.events[0]["type"] == "refused" and smtp.events[0]["client"] == "192.0.2.66"


def test_helo_mail_from_and_message_hooks_answer_as_a_client_hears_them() -> None:
    smtp = converse([Probe()], CONFIG)
    assert smtp.greeting[0].startswith("220 ")
    assert smtp.send("HELO bad.test") == ["550 5.7.1 bad name"]
    assert smtp.send("HELO good.test")[0].startswith("250 ")
    assert smtp.send("MAIL FROM:<x@blocked.test>") == ["550 5.7.1 blocked"]
    assert smtp.send(transaction("bob@crm.test"))[-1].startswith("250 2.0.0 Ok: queued as ")
    [(envelope, routes)] = smtp.queued
    assert routes == {"bob@crm.test": "crm:inbox"} and envelope.session.helo == "good.test"
    assert smtp.send(transaction("bob@crm.test", "Subject: x\r\n\r\nforbidden words\r\n"))[-1] == (
        "550 5.7.1 no such words here")
    assert len(smtp.queued) == 1
    kinds = [(event["type"], event["recipient"]) for event in smtp.events]
    assert kinds == [("refused", ""), ("received", "bob@crm.test"), ("refused", "bob@crm.test")]


def test_added_headers_are_stored_below_the_trace_fields() -> None:
    smtp = converse([Probe()], {**CONFIG, "relay": {"transport": {"example.test": "local"}}})
    smtp.send("EHLO client.test")
    smtp.send(transaction("alice@example.test"))
    [(addresses, stored)] = smtp.stored
    assert addresses == ["alice@example.test"]
    assert b"\nX-Probe: yes\nSubject: hi\n\nhello\n" in stored and stored.startswith(b"Return-Path: <a@remote.test>")


def test_an_authenticated_session_meets_the_sender_policy() -> None:
    """The built-in sender policy is a mailgate_mail_from plugin too: asked after the test's plugins."""
    smtp = converse([], {**CONFIG, "limits": {"sender_rate": "1/hour"}}, user="alice@example.test")
    smtp.send("EHLO client.test")
    assert smtp.send("MAIL FROM:<mallory@example.test>") == [
        "553 5.7.1 Sender address not owned by the authenticated user"]
    assert smtp.send("MAIL FROM:<alice@example.test>") == ["250 2.1.0 Ok"]
    smtp.send("RSET")
    assert smtp.send("MAIL FROM:<alice@example.test>")[0].startswith("450 4.7.1 Sender rate limit exceeded")


class Reader:
    """Asked after the built-ins (trylast): sees what the plugins before it added on top."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    @hookimpl(trylast=True)
    def mailgate_message(self, message: bytes) -> None:
        self.seen.append(message)


def test_a_later_plugin_sees_the_fields_an_earlier_one_added() -> None:
    reader = Reader()
    smtp = converse([reader, Probe()], {**CONFIG, "relay": {"transport": {"example.test": "local"}}})
    smtp.send("HELO good.test")
    assert smtp.send(transaction("alice@example.test"))[-1].startswith("250 ")
    [seen] = reader.seen
    assert seen.startswith(b"X-Probe: yes\r\nSubject: hi\r\n")
    [(_, stored)] = smtp.stored
    assert stored.count(b"X-Probe: yes\n") == 1


def test_a_forged_authentication_results_field_is_removed_even_without_checks() -> None:
    """The checks need DNS (off under the test clock); the removal of fields claiming our
    authserv-id does not, and applies to every client."""
    smtp = converse([], {**CONFIG, "server": {"hostname": "mx.example.test"},
                         "relay": {"transport": {"example.test": "local"}}})
    smtp.send("HELO client.test")
    body = ("Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n"
            "Authentication-Results: elsewhere.test; spf=fail\r\nSubject: hi\r\n\r\nhello\r\n")
    assert smtp.send(transaction("alice@example.test", body))[-1].startswith("250 ")
    [(_, stored)] = smtp.stored
    assert b"bank.test" not in stored and b"Authentication-Results: elsewhere.test; spf=fail\n" in stored
