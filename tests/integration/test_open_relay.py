"""mailgate is not an open relay: a real `twistd mailgate` probed over loopback.

The gateway runs with the default relay policy (no `relay.allowed_networks`,
an smtp listener without TLS, so no AUTH there). Every trick that has made
other MTAs relay is tried: source routes, the percent hack, bang paths,
quoted local parts hiding an '@', letter case, address literals. None may be
answered 250 for a remote destination, and nothing may reach the outbound
queue. An authenticated session relaying the same address proves the refusals
come from the policy, not from a server that refuses everything.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Callable

import pytest

from tests.support.gateway import Gateway, client_tls, free_port

ALICE, PASSWORD = "alice@example.test", "correct horse"
STRANGER = "stranger@remote.test"
RELAY_DENIED = (554, "5.7.1")
UNKNOWN_USER = (550, "5.1.1")

# Remote destinations, however spelt: refused as relaying.
REMOTE = [
    "<victim@remote.test>",
    "<victim@REMOTE.TEST>",
    "<VICTIM@Remote.Test>",
    "<victim@remote.test.>",
    "<victim@[127.0.0.2]>",
    '<"victim"@remote.test>',
    "<postmaster@remote.test>",
]
# Source routes (RFC 5321 appendix C: the route is dropped, the mailbox decides).
SOURCE_ROUTED = [
    "<@example.test:victim@remote.test>",
    "<@example.test,@mx.example.test:victim@remote.test>",
]
# Local-looking addresses that an old MTA would have re-routed to remote.test.
SMUGGLED = [
    "<victim%remote.test@example.test>",
    "<remote.test!victim@example.test>",
    '<"victim@remote.test"@example.test>',
    '<"victim%remote.test"@example.test>',
    '<"victim@remote.test">',
    "<victim@remote.test@example.test>",
    "<victim@example.test@remote.test>",
]


# --- helpers -------------------------------------------------------------------




def anonymous(gateway: Gateway) -> smtplib.SMTP:
    """A session on the plain smtp listener, not authenticated, a transaction open."""
    client = smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30)
    client.ehlo("client.test")
    assert not client.has_extn("auth")  # no AUTH on this listener: the policy alone decides
    assert client.mail(STRANGER)[0] == 250
    return client


def rcpt(client: smtplib.SMTP, path: str) -> tuple[int, str]:
    """RCPT TO with `path` exactly as written (smtplib.rcpt would re-quote it)."""
    code, text = client.docmd("RCPT", f"TO:{path}")
    return code, text.decode()


def probe(client: smtplib.SMTP, paths: list[str]) -> dict[str, tuple[int, str]]:
    """Every path's answer, all in one transaction (each refusal leaves it open)."""
    return {path: rcpt(client, path) for path in paths}


def offenders(answers: dict[str, tuple[int, str]], fine: Callable[[int, str], bool]) -> dict:
    """The answers that are not `fine`: an empty dict names no culprit, a failure names all."""
    return {path: answer for path, answer in answers.items() if not fine(*answer)}


def queued(gateway: Gateway) -> list[Path]:
    """Entries in the outbound queue (`var/queue/env`); a missing directory is empty."""
    env = gateway.root / "var" / "queue" / "env"
    return sorted(env.iterdir()) if env.is_dir() else []


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    """Default relay policy. relay.nameservers points at a closed port only so that a
    failing test could never send a DNS question (or mail) off this machine."""
    gw = make_gateway(("smtp", "submission"), extra=f'[relay]\nnameservers = ["127.0.0.1:{free_port()}"]\n')
    gw.add_user(ALICE, PASSWORD)
    return gw.start()


# --- tests ---------------------------------------------------------------------


def test_remote_recipient_is_refused(gateway: Gateway) -> None:
    """A remote recipient from an unauthenticated client outside allowed_networks: 554 5.7.1,
    whatever the letter case, a trailing dot, an address literal or a quoted local part."""
    with anonymous(gateway) as client:
        answers = probe(client, REMOTE)
        assert client.docmd("DATA")[0] == 554  # no valid recipient: no message at all
    assert offenders(answers, lambda code, text: (code, text[:5]) == RELAY_DENIED) == {}
    assert queued(gateway) == []


def test_source_route_is_not_relayed(gateway: Gateway) -> None:
    """`<@local:victim@remote>`: the source route is dropped (then 554 5.7.1) or refused as
    syntax (501); never accepted because the route names us."""
    with anonymous(gateway) as client:
        answers = probe(client, SOURCE_ROUTED)
        assert client.docmd("DATA")[0] == 554
    assert offenders(answers, lambda code, text: code == 501 or (code, text[:5]) == RELAY_DENIED) == {}
    assert queued(gateway) == []


def test_percent_hack_bang_path_and_quoted_at_are_not_relayed(gateway: Gateway) -> None:
    """`victim%remote@local`, `remote!victim@local` and quoted local parts holding '@' or
    '%' are a local mailbox (none exists: 550) or bad syntax (501), never a relay."""
    with anonymous(gateway) as client:
        answers = probe(client, SMUGGLED)
        assert client.docmd("DATA")[0] == 554
    assert offenders(answers, lambda code, text: code in (501, 550)) == {}
    code, text = answers["<victim%remote.test@example.test>"]  # the whole local part is looked up
    assert (code, text[:5]) == UNKNOWN_USER
    assert queued(gateway) == []


def test_trailing_dot_domain_is_local(gateway: Gateway) -> None:
    """`example.test.` is example.test: a known user is accepted and delivered locally, an
    unknown one gets 550 5.1.1 (not 554: it is not treated as relaying)."""
    with anonymous(gateway) as client:
        code, text = rcpt(client, "<victim@example.test.>")
        assert (code, text[:5]) == UNKNOWN_USER
        assert rcpt(client, "<alice@example.test.>")[0] == 250
        code, text = client.data(b"Subject: trailing dot\r\n\r\nhi\r\n")
        assert code == 250, text
    [path] = gateway.new_messages(ALICE)
    assert b"Subject: trailing dot" in path.read_bytes()
    assert queued(gateway) == []


def test_hostile_session_delivers_locally_and_queues_nothing(gateway: Gateway) -> None:
    """Every trick in one transaction next to one genuine local recipient: the message is
    accepted for alice alone, stored in her Maildir, and the outbound queue stays empty."""
    with anonymous(gateway) as client:
        assert rcpt(client, f"<{ALICE}>")[0] == 250
        for path in REMOTE + SOURCE_ROUTED + SMUGGLED:
            code, text = rcpt(client, path)
            assert code >= 500, (path, code, text)
        code, text = client.data(b"Subject: only for alice\r\n\r\nhi\r\n")
        assert code == 250, text
    [path] = gateway.new_messages(ALICE)
    stored = path.read_bytes()
    assert b"Subject: only for alice" in stored
    assert b"\tfor <alice@example.test>;" in stored  # the envelope held alice alone
    assert queued(gateway) == []


def test_authenticated_user_may_relay(gateway: Gateway) -> None:
    """Control: after STARTTLS + AUTH on the submission listener, the same remote recipient
    is accepted, so the refusals above are the relay policy, not a broken server."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=30) as client:
        client.ehlo("client.test")
        client.starttls(context=client_tls())
        client.ehlo("client.test")
        client.login(ALICE, PASSWORD)
        assert client.mail(ALICE)[0] == 250
        code, text = rcpt(client, "<victim@remote.test>")
        assert (code, text[:5]) == (250, "2.1.5")
        assert client.rset()[0] == 250  # no DATA: nothing is queued, nothing leaves
    assert queued(gateway) == []
