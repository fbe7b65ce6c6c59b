"""The session hooks over real sockets: a real `twistd mailgate`, smtplib, a plugin loaded from plugins.paths.

The probe plugin decides by what the client sends, so one gateway serves
every case: its own network's peers are refused at connect only when the
test asks (a file names them), HELO names and senders are refused by their
spelling, and message content picks what mailgate_message does.
"""

from __future__ import annotations

import smtplib
import socket
import textwrap
from pathlib import Path

import pytest

from tests.support.gateway import Gateway

ALICE = "alice@example.test"
PROBE = textwrap.dedent('''
    import os
    from mailgate import MessageChange, hookimpl

    @hookimpl
    def mailgate_connect(session):
        if os.path.exists("refuse-connections"):
            return "554 5.7.1 probe: no mail from " + session.peer
        return None

    @hookimpl
    def mailgate_helo(session, name):
        return "550 5.7.1 probe: bad HELO " + name if name.startswith("bad.") else None

    @hookimpl
    def mailgate_mail_from(sender):
        return "550 5.7.1 probe: sender domain blocked" if sender.endswith("@blocked.test") else None

    @hookimpl
    def mailgate_message(message):
        if b"VIRUS" in message:
            return "550 5.7.1 probe: infected"
        head, blank, body = message.partition(b"\\r\\n\\r\\n")
        if b"Subject: tag me" in head:
            return MessageChange(message=head.replace(b"Subject: tag me", b"Subject: [TAGGED] tag me") + blank + body,
                                 headers=[("X-Probe", "seen")])
        return MessageChange(headers=[("X-Probe", "seen")])
''')


@pytest.fixture
def gateway(make_gateway, tmp_path: Path) -> Gateway:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "probe.py").write_text(PROBE)
    extra = f'[plugins]\npaths = ["{tmp_path / "plugins"}"]\nenable = ["probe"]\n'
    gw = make_gateway(("smtp",), extra=extra)
    gw.add_user(ALICE)
    return gw.start()


def client(gateway: Gateway) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30)


def test_a_connect_refusal_is_the_greeting(gateway: Gateway) -> None:
    (gateway.root / "refuse-connections").touch()
    with socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=10) as sock:
        greeting = sock.makefile("rb").read()  # the whole conversation: the refusal, then the end
    assert greeting == b"554 5.7.1 probe: no mail from 127.0.0.1\r\n"
    (gateway.root / "refuse-connections").unlink()
    with client(gateway) as smtp:
        assert smtp.noop()[0] == 250


def test_helo_and_mail_from_refusals_carry_the_plugins_text(gateway: Gateway) -> None:
    with client(gateway) as smtp:
        assert smtp.ehlo("bad.example.test") == (550, b"5.7.1 probe: bad HELO bad.example.test")
        assert smtp.ehlo("good.example.test")[0] == 250
        assert smtp.mail("spammer@blocked.test") == (550, b"5.7.1 probe: sender domain blocked")
        assert smtp.mail("friend@remote.test")[0] == 250


def test_mailgate_message_adds_a_header_rewrites_the_subject_and_refuses_by_content(gateway: Gateway) -> None:
    with client(gateway) as smtp:
        smtp.sendmail("bob@remote.test", [ALICE], b"Subject: tag me\r\n\r\nhello\r\n")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("bob@remote.test", [ALICE], b"Subject: hi\r\n\r\nthis has a VIRUS in it\r\n")
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 probe: infected")
    [stored] = gateway.new_messages(ALICE)
    data = stored.read_bytes()
    trace_end = data.index(b"\nX-Probe: seen\n")  # below mailgate's trace fields, above the message
    assert data.index(b"\nReceived: ") < trace_end
    assert b"\nX-Probe: seen\nAuthentication-Results: mx.example.test;\n" in data  # the built-ins' fields: below
    assert data.endswith(b"\ndmarc=none (no From: domain)\nSubject: [TAGGED] tag me\n\nhello\n".replace(
        b"\ndmarc", b"\n\tdmarc"))
