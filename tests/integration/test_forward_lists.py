"""Forwarding rules, mailing lists, EXPN and VRFY: routing units and a real gateway."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from mailgate.builtin import load_plugins
from mailgate.config import parse_config
from mailgate.core.reply import Reply
from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.inbound.routing import LOOP, expand_list, resolve
from mailgate.inbound.transaction import Deliverer
from mailgate.store.maildir_writer import StoredMessage
from tests.support.gateway import Gateway

SETTINGS = {
    "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
    "domains": {"local": ["example.test"]},
    "forward": [
        {"match": "old@example.test", "to": ["alice@example.test", "someone@remote.test"]},
        {"match": "kept@example.test", "to": ["bob@example.test"], "keep": True},
        {"match": "ping@example.test", "to": ["pong@example.test"]},
        {"match": "pong@example.test", "to": ["ping@example.test"]},
        {"match": "*@catchall.test", "to": ["alice@example.test"]},
    ],
    "lists": {
        "team@example.test": {"members": ["alice@example.test", "bob@example.test", "carol@remote.test",
                                          "sub@example.test"]},
        "sub@example.test": {"members": ["dave@example.test", "team@example.test", "alice@example.test"]},
        "closed@example.test": {"members": ["alice@example.test"], "post": "members"},
    },
}


def resolved(hooks, recipient: str, **envelope) -> list[tuple[str, str]] | Reply:
    d = Deferred.fromCoroutine(resolve(hooks, recipient, Envelope(**envelope)))
    return d.result


@pytest.fixture
def hooks(tmp_path: Path, fast_hashes, monkeypatch):
    from mailgate.accounts import users_file as users

    users_file = tmp_path / "users"
    for name in ("alice", "bob", "kept", "dave"):
        users.add_user(str(users_file), f"{name}@example.test", "pw")
    config = parse_config({**SETTINGS, "users": {"file": str(users_file)}})
    manager = load_plugins(config)
    manager.hook.mailgate_configure(config=config, reactor=Clock())
    return Hooks(manager, Clock())


def test_forward_replaces_and_relays_remote_targets(hooks) -> None:
    """A forward rule is mailgate's own: its remote target is relayed for anyone."""
    assert resolved(hooks, "old@example.test") == [("alice@example.test", "local"), ("someone@remote.test", "mx")]


def test_keep_stores_a_copy_in_the_original_mailbox(hooks) -> None:
    assert resolved(hooks, "kept@example.test") == [("bob@example.test", "local"), ("kept@example.test", "local")]


def test_domain_wildcard(hooks) -> None:
    assert resolved(hooks, "anything@catchall.test") == [("alice@example.test", "local")]


def test_forward_loop_is_refused(hooks) -> None:
    assert resolved(hooks, "ping@example.test") == LOOP


def test_list_routes_to_list_and_posting_policy(hooks) -> None:
    assert resolved(hooks, "team@example.test") == [("team@example.test", "list:team@example.test")]
    refused = resolved(hooks, "closed@example.test", mail_from="stranger@remote.test")
    assert isinstance(refused, Reply) and refused.code == 550
    assert resolved(hooks, "closed@example.test", mail_from="alice@example.test") == [
        ("closed@example.test", "list:closed@example.test")]


def test_nested_lists_expand_once_each(hooks) -> None:
    members = Deferred.fromCoroutine(expand_list(hooks, "team@example.test")).result
    assert members == ["alice@example.test", "bob@example.test", "carol@remote.test", "dave@example.test"]


class RecordingStore:
    def __init__(self) -> None:
        self.delivered: list[tuple[list[str], bytes]] = []

    def deliver_all(self, copies):
        for addresses, message in copies:
            self.delivered.append((list(addresses), message.header + b"".join(message.body)))
        return succeed(None)


class RecordingQueue:
    def __init__(self) -> None:
        self.added: list[tuple[str, str, list, bytes]] = []

    async def add(self, entries):
        for queue_id, envelope, recipients, message in entries:
            self.added.append((queue_id, envelope.mail_from, list(recipients), message.header))

    def remove(self, queue_id):
        return succeed(None)

    def release(self, queue_ids) -> None:
        pass


def test_list_copy_has_list_sender_and_list_id(hooks) -> None:
    store, queue = RecordingStore(), RecordingQueue()
    deliverer = Deliverer(store, queue, hooks, "mx.example.test")
    body = b"Subject: hi team\n\nhello\n"
    header = b"Return-Path: <poster@remote.test>\nReceived: from x by mx id Q1;\n\tdate\n"
    envelope = Envelope(mail_from="poster@remote.test", rcpt_to=["team@example.test"],
                        routes={"team@example.test": Route("list:team@example.test")})
    message = StoredMessage.build(header, [body], len(body), body.count(b"\n"))
    Deferred.fromCoroutine(deliverer.deliver(envelope, message, "Q1"))
    [(local, stored)] = store.delivered
    assert local == ["alice@example.test", "bob@example.test", "dave@example.test"]
    assert stored.startswith(b"Return-Path: <team-bounces@example.test>\nReceived: ")
    assert b"\nList-Id: <team.example.test>\nReceived: from x by mx id Q1;" in stored
    assert stored.endswith(body)
    [(queue_id, sender, remote, _)] = queue.added
    assert (queue_id, sender, remote) == ("Q1L0", "team-bounces@example.test", [("carol@remote.test", "mx")])


# --- a real gateway ---------------------------------------------------------

LISTS = """
[[forward]]
match = "old@example.test"
to = ["alice@example.test"]
[[forward]]
match = "ping@example.test"
to = ["pong@example.test"]
[[forward]]
match = "pong@example.test"
to = ["ping@example.test"]
[lists."team@example.test"]
members = ["alice@example.test", "bob@example.test"]
[security]
vrfy = "all"
expn = "authenticated"
plaintext_auth = "always"
"""


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    gw = make_gateway(("smtp",), extra=LISTS)
    gw.add_user("alice@example.test", "pw")
    gw.add_user("bob@example.test", "pw")
    return gw.start()


def smtp(gateway: Gateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30)
    client.ehlo()
    return client


def test_list_delivers_to_every_member_with_list_id(gateway: Gateway) -> None:
    with smtp(gateway) as client:
        assert client.sendmail("poster@remote.test", ["team@example.test"], b"Subject: all\r\n\r\nhi\r\n") == {}
    for member in ("alice@example.test", "bob@example.test"):
        [path] = gateway.new_messages(member)
        data = path.read_bytes()
        assert data.startswith(b"Return-Path: <team-bounces@example.test>\n")
        assert b"\nList-Id: <team.example.test>\n" in data


def test_forward_delivers_to_the_target(gateway: Gateway) -> None:
    with smtp(gateway) as client:
        assert client.sendmail("x@remote.test", ["old@example.test"], b"Subject: fwd\r\n\r\nhi\r\n") == {}
    assert len(gateway.new_messages("alice@example.test")) == 1


def test_forward_loop_554(gateway: Gateway) -> None:
    with smtp(gateway) as client:
        client.mail("x@remote.test")
        code, text = client.rcpt("ping@example.test")
    assert (code, text[:5]) == (554, b"5.4.6")


def test_expn_needs_authentication_and_then_lists_members(gateway: Gateway) -> None:
    with smtp(gateway) as client:
        code, text = client.docmd("EXPN", "team@example.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        code_unknown, text_unknown = client.docmd("EXPN", "nosuch@example.test")
        assert (code_unknown, text_unknown) == (code, text)  # nothing tells a list from a non-list
        client.login("alice@example.test", "pw")
        code, text = client.docmd("EXPN", "team@example.test")
    assert code == 250
    assert text.splitlines() == [b"2.1.5 <alice@example.test>", b"2.1.5 <bob@example.test>"]


def test_vrfy_policy_all(gateway: Gateway) -> None:
    with smtp(gateway) as client:
        assert client.verify("alice@example.test")[0] == 250
        assert client.verify("nobody@example.test")[0] == 550
        assert client.verify("someone@remote.test")[0] == 252


def test_more_than_50_received_headers_is_a_loop(gateway: Gateway) -> None:
    looping = b"".join(b"Received: from hop%d by relay%d;\r\n" % (n, n) for n in range(51))
    with smtp(gateway) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("x@remote.test", ["alice@example.test"], looping + b"Subject: loop\r\n\r\nhi\r\n")
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (554, b"5.4.6")
    assert gateway.new_messages("alice@example.test") == []


def test_vrfy_refused_by_default_policy(make_gateway) -> None:
    gateway = make_gateway(("smtp",))
    gateway.add_user("alice@example.test", "pw")
    gateway.start()
    with smtp(gateway) as client:
        code_known, text_known = client.verify("alice@example.test")
        code_unknown, text_unknown = client.verify("nobody@example.test")
        expn = client.docmd("EXPN", "alice@example.test")
    assert (code_known, text_known[:5]) == (252, b"2.5.2")
    assert (code_known, text_known) == (code_unknown, text_unknown)
    assert expn[0] == 550
