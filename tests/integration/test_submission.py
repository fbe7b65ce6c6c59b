"""Submission end to end: STARTTLS, implicit TLS and AUTH PLAIN/LOGIN with smtplib."""

from __future__ import annotations

import smtplib

import pytest

from tests.support.gateway import Gateway, client_tls, free_port

ALICE, PASSWORD = "alice@example.test", "correct horse"




@pytest.fixture
def gateway(make_gateway) -> Gateway:
    smtps = free_port()
    listeners = "".join(
        f'[[listen]]\nname = "{name}"\nprotocol = "{protocol}"\n'
        f'endpoint = "tcp:{port}:interface=127.0.0.1"\ntls = "{tls}"\n\n'
        for name, protocol, port, tls in [
            ("submission", "submission", free_port(), "starttls"),
            ("smtps", "submission", smtps, "implicit"),
            ("mx", "smtp", free_port(), "starttls"),
        ]
    )
    gw = make_gateway((), listeners=listeners)
    gw.ports = _ports(listeners)
    gw.add_user(ALICE, PASSWORD)
    return gw.start()


def _ports(listeners: str) -> dict[str, int]:
    names = [line.split('"')[1] for line in listeners.splitlines() if line.startswith("name")]
    ports = [int(line.split(":")[1]) for line in listeners.splitlines() if line.startswith("endpoint")]
    return dict(zip(names, ports))


def submission(gateway: Gateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30)
    client.ehlo()
    return client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_then_auth_then_send(gateway: Gateway, mechanism: str) -> None:
    with submission(gateway) as client:
        client.starttls(context=client_tls())
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        authenticate = getattr(client, f"auth_{mechanism.lower()}")
        client.user, client.password = ALICE, PASSWORD
        code, text = client.auth(mechanism, authenticate)
        assert (code, text[:5]) == (235, b"2.7.0")
        assert client.sendmail(ALICE, [ALICE], b"Subject: to myself\r\n\r\nhi\r\n") == {}
    [path] = gateway.new_messages(ALICE)
    assert b"with ESMTPSA id" in path.read_bytes()


def test_implicit_tls_listener(gateway: Gateway) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", gateway.ports["smtps"], timeout=30, context=client_tls()) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, [ALICE], b"Subject: tls\r\n\r\nhi\r\n") == {}
    [path] = gateway.new_messages(ALICE)
    assert b"with ESMTPSA id" in path.read_bytes()


def test_no_auth_before_tls(gateway: Gateway) -> None:
    """Plain passwords never cross the wire unencrypted under the default policy."""
    with submission(gateway) as client:
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0IGhvcnNl")
        assert (code, text[:5]) == (530, b"5.7.0")


def test_submission_requires_auth_before_mail(gateway: Gateway) -> None:
    with submission(gateway) as client:
        client.starttls(context=client_tls())
        client.ehlo()
        code, text = client.mail(ALICE)
        assert (code, text[:5]) == (530, b"5.7.0")


def test_wrong_password_is_535(gateway: Gateway) -> None:
    with submission(gateway) as client:
        client.starttls(context=client_tls())
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(ALICE, "wrong")
        assert (failed.value.smtp_code, failed.value.smtp_error[:5]) == (535, b"5.7.8")


def test_sender_must_be_owned(gateway: Gateway) -> None:
    with submission(gateway) as client:
        client.starttls(context=client_tls())
        client.ehlo()
        client.login(ALICE, PASSWORD)
        code, text = client.mail("ceo@example.test")
        assert (code, text[:5]) == (553, b"5.7.1")


def test_authenticated_user_may_relay(gateway: Gateway) -> None:
    """Authenticated: a remote recipient is not refused as relaying (554)."""
    with submission(gateway) as client:
        client.starttls(context=client_tls())
        client.ehlo()
        client.login(ALICE, PASSWORD)
        client.mail(ALICE)
        code, _ = client.rcpt("friend@remote.test")
        assert code != 554
    with smtplib.SMTP("127.0.0.1", gateway.ports["mx"], timeout=30) as anonymous:
        anonymous.ehlo()
        anonymous.mail("x@remote.test")
        assert anonymous.rcpt("friend@remote.test")[0] == 554
