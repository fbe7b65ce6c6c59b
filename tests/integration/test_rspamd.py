"""Content scanning end to end: a real `twistd mailgate` asking a real rspamd at the end of DATA."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests.support.gateway import Gateway, free_port
from tests.support.rspamd import GTUBE, NO_RSPAMD, RSPAMD, SPAMMY_HEADER, RspamdServer

pytestmark = pytest.mark.skipif(RSPAMD is None, reason=NO_RSPAMD)
ALICE = "alice@example.test"


@pytest.fixture
def rspamd() -> Iterator[RspamdServer]:
    with RspamdServer() as server:
        yield server


def gateway_with(make_gateway, url: str) -> Gateway:
    gateway = make_gateway(("smtp",), extra=f'[rspamd]\nurl = "{url}"\ntimeout = "2s"\n')
    gateway.add_user(ALICE)
    return gateway.start()


HEADERS = ("From: Bob <bob@remote.test>\r\nTo: Alice <alice@example.test>\r\n"
           "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{n}@remote.test>\r\n")


def send(gateway: Gateway, body: str) -> None:
    """A well-formed message (rspamd scores missing From, To, Date or Message-ID)."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.sendmail("bob@remote.test", [ALICE], (HEADERS.format(n=abs(hash(body))) + body).encode())


def test_gtube_is_refused_and_a_scored_message_is_marked(make_gateway, rspamd: RspamdServer) -> None:
    gateway = gateway_with(make_gateway, rspamd.url)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(gateway, f"Subject: test\r\n\r\n{GTUBE}\r\n")
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 Gtube pattern")
    send(gateway, f"Subject: offer\r\n{SPAMMY_HEADER}: yes\r\n\r\nbuy now\r\n")
    send(gateway, "Subject: hello\r\n\r\nan ordinary message\r\n")
    marked, plain = (path.read_bytes() for path in gateway.new_messages(ALICE))
    assert b"\nX-Spam: Yes\nX-Spam-Score: " in marked and b"buy now" in marked
    assert b"X-Spam" not in plain


def test_rspamd_down_means_accepted_unscanned(make_gateway) -> None:
    gateway = gateway_with(make_gateway, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    send(gateway, f"Subject: test\r\n\r\n{GTUBE}\r\n")
    [stored] = gateway.new_messages(ALICE)
    assert GTUBE.encode() in stored.read_bytes()
    assert "rspamd" in gateway.log() and "unscanned" in gateway.log()
