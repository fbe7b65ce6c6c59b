"""SMTPUTF8 (RFC 6531) in memory: advertised, UTF-8 paths only with it, one normal form, UTF8SMTP traces."""

from __future__ import annotations

from tests.support.smtp_session import Client, Server


def test_smtputf8_is_advertised(server: Server) -> None:
    [ehlo] = server.connect().send(b"EHLO c\r\n")
    assert "\n250-SMTPUTF8\n" in ehlo


def test_utf8_paths_need_smtputf8(client: Client) -> None:
    assert client.send("MAIL FROM:<josé@remote.test>\r\n".encode()) == [
        "553 5.6.7 Non-ASCII address needs MAIL FROM with SMTPUTF8"]
    client.send(b"MAIL FROM:<s@remote.test>\r\n")
    [reply] = client.send("RCPT TO:<josé@example.test>\r\n".encode())
    assert reply.startswith("553 5.6.7 ")


def test_smtputf8_takes_no_value(client: Client) -> None:
    [reply] = client.send(b"MAIL FROM:<s@remote.test> SMTPUTF8=yes\r\n")
    assert reply.startswith("555 5.5.4 ")


def test_a_utf8_transaction_is_normalized_and_traced(client: Client, server: Server) -> None:
    replies = client.send("MAIL FROM:<JOSÉ@Bücher.example> SMTPUTF8\r\nRCPT TO:<ALICE@EXAMPLE.test>\r\n"
                          "DATA\r\nSubject: é\r\n\r\nhi\r\n.\r\n".encode())
    assert [r[:3] for r in replies] == ["250", "250", "354", "250"], replies
    [(envelope, message)] = server.deliverer.calls
    assert envelope.mail_from == "josé@xn--bcher-kva.example"
    assert envelope.parameters == {"SMTPUTF8": None}
    assert b" with UTF8SMTP id " in message and "Return-Path: <josé@xn--bcher-kva.example>".encode() in message


def test_non_ascii_is_refused_in_other_commands(client: Client) -> None:
    assert client.send_codes("NOOP é\r\nHELO é\r\n".encode()) == [500, 500]


def test_invalid_utf8_is_refused(client: Client) -> None:
    assert client.send_codes(b"MAIL FROM:<\xc3@example.test> SMTPUTF8\r\n") == [500]
