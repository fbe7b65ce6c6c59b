"""SMTP AUTH in memory (RFC 4954): PLAIN and LOGIN exchanges, refusals, the failure throttle, exact replies."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail

from tests.support.smtp_session import (
    ALICE,
    TIMEOUT,
    Client,
    Server,
    TLSStringTransport,
    replies,
    transaction,
)

OK = "235 2.7.0 Authentication successful"
INVALID = "535 5.7.8 Authentication credentials invalid"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def plain(user: str = ALICE, password: str = "secret") -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


@pytest.fixture
def auth_server(make_server: Callable[..., Server]) -> Server:
    """AUTH offered without TLS, so these tests need no handshake."""
    return make_server(auth=True, security={"plaintext_auth": "always"})


@pytest.fixture
def auth_client(auth_server: Server) -> Client:
    c = auth_server.connect()
    c.send(b"EHLO client.test\r\n")
    return c


def test_ehlo_offers_auth_until_authenticated(auth_server: Server) -> None:
    c = auth_server.connect()
    assert "250-AUTH PLAIN LOGIN" in c.send(b"EHLO client.test\r\n")[0].split("\n")
    assert c.send(b"AUTH PLAIN " + plain() + b"\r\n") == [OK]
    assert "AUTH" not in c.send(b"EHLO client.test\r\n")[0]


def test_plain_with_initial_response(auth_server: Server, auth_client: Client) -> None:
    assert auth_client.send(b"AUTH PLAIN " + plain() + b"\r\n") == [OK]
    assert auth_client.send_codes(transaction([ALICE]).replace(b"sender@remote.test", ALICE.encode())) == [
        250, 250, 354, 250,
    ]
    [(envelope, stored)] = auth_server.deliverer.calls
    assert envelope.authenticated_as == ALICE
    assert b" with ESMTPA id " in stored


def test_plain_after_empty_challenge(auth_client: Client) -> None:
    auth_client.transport.clear()
    auth_client.protocol.dataReceived(b"AUTH PLAIN\r\n")
    assert auth_client.transport.value() == b"334 \r\n"
    assert auth_client.send(plain() + b"\r\n") == [OK]


def test_login_exchange(auth_client: Client) -> None:
    auth_client.transport.clear()
    auth_client.protocol.dataReceived(b"AUTH LOGIN\r\n")
    assert auth_client.transport.value() == b"334 VXNlcm5hbWU6\r\n"  # "Username:"
    auth_client.transport.clear()
    auth_client.protocol.dataReceived(b64(ALICE) + b"\r\n")
    assert auth_client.transport.value() == b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
    assert auth_client.send(b64("secret") + b"\r\n") == [OK]


def test_login_with_initial_username(auth_client: Client) -> None:
    assert auth_client.send(b"AUTH LOGIN " + b64(ALICE) + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert auth_client.send(b64("secret") + b"\r\n") == [OK]


def test_pipelined_exchange_keeps_its_order(auth_client: Client) -> None:
    sent = auth_client.send(b"AUTH LOGIN\r\n" + b64(ALICE) + b"\r\n" + b64("secret") + b"\r\nNOOP\r\n")
    assert sent == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", OK, "250 2.0.0 Ok"]


def test_cancelled_and_malformed_responses(auth_client: Client) -> None:
    assert auth_client.send(b"AUTH PLAIN\r\n*\r\n") == ["334 ", "501 5.0.0 Authentication cancelled"]
    assert auth_client.send(b"AUTH PLAIN !!!\r\n") == ["501 5.5.2 Malformed authentication data"]
    assert auth_client.send(b"AUTH PLAIN " + b64("no nul bytes") + b"\r\n") == [
        "501 5.5.2 Malformed authentication data",
    ]
    assert auth_client.send(b"AUTH LOGIN " + b64(ALICE) + b"\r\n*\r\n") == [
        "334 UGFzc3dvcmQ6", "501 5.0.0 Authentication cancelled",
    ]
    assert auth_client.send(b"AUTH PLAIN " + plain() + b"\r\n") == [OK]  # none of that counted as a failure


def test_refusals(auth_server: Server, auth_client: Client) -> None:
    assert auth_client.send(b"AUTH CRAM-MD5\r\n") == ["504 5.5.4 Unrecognized authentication type"]
    assert auth_client.send(b"MAIL FROM:<a@remote.test>\r\nAUTH PLAIN " + plain() + b"\r\nRSET\r\n") == [
        "250 2.1.0 Ok", "503 5.5.1 AUTH not allowed during a mail transaction", "250 2.0.0 Ok",
    ]
    assert auth_client.send(b"AUTH PLAIN " + plain() + b"\r\n") == [OK]
    assert auth_client.send(b"AUTH PLAIN " + plain() + b"\r\n") == ["503 5.5.1 Already authenticated"]


def test_no_auth_without_a_portal(client: Client) -> None:
    assert client.send(b"AUTH PLAIN " + plain() + b"\r\n") == ["502 5.5.1 AUTH not available"]


def test_no_auth_on_a_listener_without_it(make_server: Callable[..., Server]) -> None:
    listen = [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525", "auth": "none"}]
    c = make_server(auth=True, listen=listen, security={"plaintext_auth": "always"}).connect()
    assert "AUTH" not in c.send(b"EHLO client.test\r\n")[0]
    assert c.send(b"AUTH PLAIN " + plain() + b"\r\n") == ["502 5.5.1 AUTH not available"]


def test_plaintext_auth_waits_for_tls(make_server: Callable[..., Server]) -> None:
    server = make_server(auth=True, tls_options=object())
    transport = TLSStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
    c = server.connect(transport=transport)
    assert "AUTH" not in c.send(b"EHLO client.test\r\n")[0]
    assert c.send(b"AUTH PLAIN " + plain() + b"\r\n") == ["530 5.7.0 Must issue a STARTTLS command first"]
    assert c.send_codes(b"STARTTLS\r\n") == [220]
    assert "250-AUTH PLAIN LOGIN" in c.send(b"EHLO client.test\r\n")[0].split("\n")
    assert c.send(b"AUTH PLAIN " + plain() + b"\r\n") == [OK]
    c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    [(_, stored)] = server.deliverer.calls
    assert b" with ESMTPSA id " in stored


def test_submission_requires_auth_before_mail(make_server: Callable[..., Server]) -> None:
    listen = [{"name": "sub", "protocol": "submission", "endpoint": "tcp:587"}]
    c = make_server(auth=True, listen=listen, security={"plaintext_auth": "always"}).connect()
    c.send(b"EHLO client.test\r\n")
    assert c.send(b"MAIL FROM:<alice@example.test>\r\n") == ["530 5.7.0 Authentication required"]
    assert c.send_codes(b"AUTH PLAIN " + plain() + b"\r\nMAIL FROM:<alice@example.test>\r\n") == [235, 250]


def test_sender_must_be_owned(auth_client: Client) -> None:
    auth_client.send(b"AUTH PLAIN " + plain() + b"\r\n")
    assert auth_client.send(b"MAIL FROM:<bob@example.test>\r\n") == [
        "553 5.7.1 Sender address not owned by the authenticated user",
    ]
    assert auth_client.send_codes(b"MAIL FROM:<>\r\n") == [250]


def test_wrong_password_is_answered_after_a_growing_delay(auth_server: Server, auth_client: Client) -> None:
    for delay in (1, 2):  # seconds: doubling per recent failure
        assert auth_client.send(b"AUTH PLAIN " + plain(password="wrong") + b"\r\nNOOP\r\n") == []
        auth_server.clock.advance(delay - 0.1)
        assert auth_client.transport.value() == b""
        auth_server.clock.advance(0.2)
        assert replies(auth_client.transport.value()) == [INVALID, "250 2.0.0 Ok"]


def test_too_many_failures_close_the_session(auth_server: Server, auth_client: Client) -> None:
    written = b""
    for _ in range(5):
        auth_client.transport.clear()
        auth_client.protocol.dataReceived(b"AUTH PLAIN " + plain(password="wrong") + b"\r\n")
        auth_server.clock.advance(10)
        written += auth_client.transport.value()
    assert replies(written) == [INVALID] * 4 + ["421 4.7.0 Too many authentication failures"]
    assert auth_client.transport.disconnecting


def test_attempt_during_the_penalty_is_refused_unchecked(auth_server: Server, auth_client: Client) -> None:
    """A client that does not wait for its 535 (the answer is delayed) and tries again at once, here in
    another session from the same address, is refused without its password being checked: the right
    one gets 454 too. Once the delay has passed, it is checked again."""
    assert auth_client.send(b"AUTH PLAIN " + plain(password="wrong") + b"\r\n") == []  # 535 due in 1 s
    auth_client.lose()
    again = auth_server.connect()
    again.send(b"EHLO client.test\r\n")
    assert again.send(b"AUTH PLAIN " + plain() + b"\r\n") == ["454 4.7.0 Too many authentication failures, try "
                                                              "again later"]
    assert not again.transport.disconnecting
    auth_server.clock.advance(1)
    assert again.send(b"AUTH PLAIN " + plain() + b"\r\n") == [OK]


def test_right_password_is_refused_after_the_limit(auth_server: Server, auth_client: Client) -> None:
    for _ in range(5):
        auth_client.protocol.dataReceived(b"AUTH PLAIN " + plain(password="wrong") + b"\r\n")
        auth_server.clock.advance(10)
    again = auth_server.connect()
    again.send(b"EHLO client.test\r\n")
    assert again.send_codes(b"AUTH PLAIN " + plain() + b"\r\n") == [454]
    other = auth_server.connect(ip="192.0.2.50")  # the owner, from elsewhere
    other.send(b"EHLO client.test\r\n")
    assert other.send(b"AUTH PLAIN " + plain() + b"\r\n") == [OK]


def test_checker_failure_is_temporary(auth_server: Server, auth_client: Client) -> None:
    portal = auth_server.factory.policy.portal
    portal.login = lambda *args: fail(OSError("users file unreadable"))  # type: ignore[method-assign]
    assert auth_client.send(b"AUTH PLAIN " + plain() + b"\r\nNOOP\r\n") == [
        "454 4.7.0 Temporary authentication failure", "250 2.0.0 Ok",
    ]


def test_idle_timer_runs_while_waiting_for_the_response(auth_server: Server, auth_client: Client) -> None:
    assert auth_client.send_codes(b"AUTH LOGIN\r\n") == [334]
    auth_server.clock.advance(TIMEOUT - 1)
    assert not auth_client.transport.disconnecting
    auth_client.transport.clear()
    auth_server.clock.advance(2)
    assert replies(auth_client.transport.value()) == ["421 4.4.2 Timeout exceeded, closing connection"]
    assert auth_client.transport.disconnecting
