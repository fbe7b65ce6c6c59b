"""VRFY, EXPN and HELP in memory: what security.vrfy / security.expn allow, with exact replies."""

from __future__ import annotations

import base64
from collections.abc import Callable

from tests.support.smtp_session import ALICE, Server

CANNOT = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
TEAM = {"team@example.test": {"members": ["alice@example.test", "carol@remote.test"]}}


def test_vrfy_and_expn_for_everyone(make_server: Callable[..., Server]) -> None:
    c = make_server(security={"vrfy": "all", "expn": "all"}, lists=TEAM).connect()
    assert c.send(b"VRFY <Alice@Example.test>\r\nVRFY nobody@example.test\r\nVRFY x@remote.test\r\n") == [
        "250 2.1.5 <alice@example.test>", "550 5.1.1 User unknown", CANNOT,
    ]
    assert c.send(b"EXPN team@example.test\r\nEXPN alice@example.test\r\n") == [
        "250-2.1.5 <alice@example.test>\n250 2.1.5 <carol@remote.test>", "550 5.1.1 Not a mailing list",
    ]
    assert c.send(b"VRFY\r\nEXPN <a/b@example.test>\r\n") == ["501 5.5.4 Syntax: VRFY address",
                                                            "501 5.5.4 Syntax: EXPN list"]


def test_vrfy_and_expn_for_authenticated_users_only(make_server: Callable[..., Server]) -> None:
    server = make_server(auth=True, security={"plaintext_auth": "always"}, lists=TEAM)  # the defaults
    c = server.connect()
    assert c.send(b"VRFY alice@example.test\r\nEXPN team@example.test\r\n") == [CANNOT, "550 5.7.1 EXPN not allowed"]
    c.send(b"EHLO client.test\r\nAUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0secret".encode()) + b"\r\n")
    assert c.send_codes(b"VRFY alice@example.test\r\nEXPN team@example.test\r\n") == [250, 250]


def test_vrfy_and_expn_off(make_server: Callable[..., Server]) -> None:
    c = make_server(security={"vrfy": "off", "expn": "off"}, lists=TEAM).connect()
    assert c.send(b"VRFY alice@example.test\r\nEXPN team@example.test\r\n") == [CANNOT, "502 5.5.1 EXPN not available"]


def test_help(server: Server) -> None:
    assert server.connect().send(b"HELP\r\nhelp me\r\n") == [
        "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
    ] * 2
