"""DSN on the SMTP listener (RFC 3461): advertised, checked, kept per recipient; security.dsn limits it."""

from __future__ import annotations

from typing import Callable

from tests.support.smtp_session import ALICE, BOB, Client, Server

MESSAGE = b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"


def ehlo_keywords(client: Client) -> list[str]:
    [reply] = client.send(b"EHLO c\r\n")
    return [line[4:] for line in reply.split("\n")]


def test_dsn_is_advertised(server: Server) -> None:
    assert "DSN" in ehlo_keywords(server.connect())


def test_parameters_are_kept_per_recipient(client: Client, server: Server) -> None:
    replies = client.send(b"MAIL FROM:<s@remote.test> RET=hdrs ENVID=QQ+2B1\r\n"
                          b"RCPT TO:<alice@example.test> NOTIFY=success,delay ORCPT=rfc822;a+2Bb@x.test\r\n"
                          b"RCPT TO:<bob@example.test>\r\n" + MESSAGE)
    assert [r[:3] for r in replies] == ["250", "250", "250", "354", "250"], replies
    [(envelope, _)] = server.deliverer.calls
    assert envelope.parameters == {"RET": "HDRS", "ENVID": "QQ+2B1"}
    assert envelope.recipient_parameters == {ALICE: {"NOTIFY": "SUCCESS,DELAY", "ORCPT": "rfc822;a+2Bb@x.test"}}
    assert BOB in envelope.rcpt_to


def test_forwarded_copies_keep_the_recipients_parameters(make_server: Callable[..., Server]) -> None:
    server = make_server(forward=[{"match": "team@example.test", "to": [ALICE, BOB]}])
    client = server.connect()
    client.send(b"EHLO c\r\n")
    client.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<team@example.test> NOTIFY=NEVER\r\n" + MESSAGE)
    [(envelope, _)] = server.deliverer.calls
    assert envelope.recipient_parameters == {ALICE: {"NOTIFY": "NEVER"}, BOB: {"NOTIFY": "NEVER"}}


def test_bad_values_are_refused_with_501(client: Client) -> None:
    for command in (b"MAIL FROM:<s@remote.test> RET=BODY", b"MAIL FROM:<s@remote.test> ENVID=",
                    b"MAIL FROM:<s@remote.test> ENVID=" + b"a" * 101, b"MAIL FROM:<s@remote.test> RET"):
        [reply] = client.send(command + b"\r\n")
        assert reply.startswith("501 5.5.4 "), (command, reply)
    client.send(b"MAIL FROM:<s@remote.test>\r\n")
    for command in (b"RCPT TO:<alice@example.test> NOTIFY=NEVER,DELAY", b"RCPT TO:<alice@example.test> NOTIFY",
                    b"RCPT TO:<alice@example.test> ORCPT=alice@example.test",
                    b"RCPT TO:<alice@example.test> ORCPT=rfc822;a+1"):
        [reply] = client.send(command + b"\r\n")
        assert reply.startswith("501 5.5.4 "), (command, reply)


def test_submission_only_keeps_dsn_off_the_mx_listener(make_server: Callable[..., Server]) -> None:
    server = make_server(security={"dsn": "submission"})
    client = server.connect()
    assert "DSN" not in ehlo_keywords(client)
    assert client.send(b"MAIL FROM:<s@remote.test> RET=HDRS\r\n") == ["555 5.5.4 Unsupported parameter RET"]
    client.send(b"MAIL FROM:<s@remote.test>\r\n")
    assert client.send(b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS\r\n") == [
        "555 5.5.4 Unsupported parameter NOTIFY"]


def test_submission_only_offers_dsn_where_auth_is_required(make_server: Callable[..., Server]) -> None:
    server = make_server(security={"dsn": "submission"},
                         listen=[{"name": "sub", "protocol": "submission", "endpoint": "tcp:2587"}])
    assert "DSN" in ehlo_keywords(server.connect())
