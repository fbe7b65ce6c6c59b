"""POP3 end to end: a real `twistd mailgate`, mail delivered with smtplib, read with poplib and fetchmail."""

from __future__ import annotations

import os
import poplib
import shutil
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, client_tls, free_port, wait_for

ALICE, PASSWORD = "alice@example.test", "correct horse"
SENDER = "bob@remote.test"

BODY = (
    "From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "first line\r\n.leading dot\r\n..two dots\r\n.\r\n"
    "Grüße aus Köln — ünïcödé\r\n\r\nlast line\r\n"
).encode("utf-8")




@pytest.fixture
def gateway(make_gateway) -> Gateway:
    ports = {"pop3": free_port(), "pop3s": free_port(), "smtp": free_port()}
    listeners = "".join(
        f'[[listen]]\nname = "{name}"\nprotocol = "{protocol}"\n'
        f'endpoint = "tcp:{ports[name]}:interface=127.0.0.1"\ntls = "{tls}"\n\n'
        for name, protocol, tls in [
            ("pop3", "pop3", "starttls"), ("pop3s", "pop3", "implicit"), ("smtp", "smtp", "none"),
        ]
    )
    gw = make_gateway((), listeners=listeners)
    gw.ports = ports
    gw.add_user(ALICE, PASSWORD)
    return gw.start()


def deliver(gateway: Gateway, body: bytes = BODY, count: int = 1) -> None:
    """`count` messages to ALICE over plain SMTP; each is in new/ once sendmail returns (250)."""
    before = len(gateway.new_messages(ALICE))
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        for _ in range(count):
            assert client.sendmail(SENDER, [ALICE], body) == {}
    assert len(gateway.new_messages(ALICE)) == before + count


def stored(gateway: Gateway) -> list[Path]:
    """Every message file of ALICE's Maildir, new/ and cur/ (in no particular order)."""
    box = gateway.mailbox(ALICE)
    return sorted(p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir())


def numbered(gateway: Gateway, client: poplib.POP3) -> list[Path]:
    """ALICE's files in the session's message-number order, matched by UIDL = the Maildir base name."""
    by_uid = {path.name.split(",", 1)[0].encode(): path for path in stored(gateway)}
    uids = uidls(client)
    assert set(uids.values()) <= set(by_uid)
    return [by_uid[uids[number]] for number in sorted(uids)]


def wire_form(path: Path) -> bytes:
    """What POP3 must send for a stored file (before dot-stuffing): LF turned into CRLF."""
    return path.read_bytes().replace(b"\n", b"\r\n")


def login(gateway: Gateway, user: str = ALICE, password: str = PASSWORD) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    client.stls(context=client_tls())
    client.user(user)
    client.pass_(password)
    return client


def retrieved(client: poplib.POP3, number: int) -> tuple[bytes, int]:
    """RETR as poplib hands it back (dot-stuffing undone), rejoined with CRLF, and its octet count."""
    response, lines, octets = client.retr(number)
    assert response.startswith(b"+OK")
    return b"".join(line + b"\r\n" for line in lines), octets


def uidls(client: poplib.POP3) -> dict[int, bytes]:
    return {int(number): uid for number, uid in (line.split() for line in client.uidl()[1])}


def test_every_command_after_stls(gateway: Gateway) -> None:
    deliver(gateway, count=2)
    deliver(gateway, b"Subject: short\r\n\r\none\r\ntwo\r\nthree\r\n")
    client = login(gateway)
    first, second, third = numbered(gateway, client)
    sizes = [len(wire_form(p)) for p in (first, second, third)]
    short = 1 + [first, second, third].index(min(first, second, third, key=lambda p: p.stat().st_size))

    assert client.stat() == (3, sum(sizes))
    response, listing, _ = client.list()
    assert response.startswith(b"+OK")
    assert listing == [b"%d %d" % (n, size) for n, size in enumerate(sizes, 1)]
    assert client.list(3) == b"+OK 3 %d" % sizes[2]

    uids = uidls(client)
    assert sorted(uids) == [1, 2, 3] and len(set(uids.values())) == 3
    assert all(0 < len(uid) <= 70 and all(0x21 <= c <= 0x7E for c in uid) for uid in uids.values())
    assert client.uidl(2) == b"+OK 2 " + uids[2]

    full = 2 if short == 1 else 1  # the server's order need not be delivery order
    message, octets = retrieved(client, full)
    assert message == wire_form([first, second, third][full - 1])
    assert octets == sizes[full - 1]  # LIST counts what RETR sends (CRLF, before stuffing)
    assert message.startswith(b"Return-Path: <bob@remote.test>\r\nReceived: from ")
    assert message.endswith(BODY)
    trace = message[: -len(BODY)].split(b"\r\n")[2:-1]
    results = [i for i, line in enumerate(trace) if line.startswith(b"Authentication-Results: mx.example.test;")]
    trace = [line for i, line in enumerate(trace) if i not in results]  # the checks' field, below the trace
    assert all(line[:1] in (b" ", b"\t") for line in trace)  # only folded lines (Received:, the checks' field)

    path = [first, second, third][short - 1]
    _, top0, _ = client.top(short, 0)
    assert top0 == message_lines(wire_form(path))[: header_count(path) + 1]
    _, top2, _ = client.top(short, 2)
    assert top2 == message_lines(wire_form(path))[: header_count(path) + 3]
    assert top2[-3:] == [b"", b"one", b"two"]

    assert client.dele(2).startswith(b"+OK")
    assert client.stat() == (2, sizes[0] + sizes[2])
    with pytest.raises(poplib.error_proto, match="deleted"):
        client.retr(2)
    assert [line.split()[0] for line in client.uidl()[1]] == [b"1", b"3"]
    assert client.rset().startswith(b"+OK")
    assert client.stat() == (3, sum(sizes))
    assert client.noop().startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="no message 4"):
        client.list(4)
    assert client.quit().startswith(b"+OK")
    assert len(stored(gateway)) == 3  # RSET undid the DELE


def message_lines(wire: bytes) -> list[bytes]:
    assert wire.endswith(b"\r\n")
    return wire[:-2].split(b"\r\n")


def header_count(path: Path) -> int:
    return path.read_bytes().split(b"\n\n", 1)[0].count(b"\n") + 1


def test_no_plaintext_login_before_stls(gateway: Gateway) -> None:
    """Under the default policy a password never crosses the wire unencrypted."""
    deliver(gateway)
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    capabilities = client.capa()
    assert "STLS" in capabilities and "USER" not in capabilities
    assert "PLAIN" not in capabilities.get("SASL", [])
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
        client.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
        client.pass_(PASSWORD)
    with pytest.raises(poplib.error_proto):
        client.stat()  # still not logged in
    client.stls(context=client_tls())
    capabilities = client.capa()
    assert "USER" in capabilities and "STLS" not in capabilities
    client.user(ALICE)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    assert client.stat()[0] == 1
    client.quit()


def test_wrong_password_is_auth_error(gateway: Gateway) -> None:
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    client.stls(context=client_tls())
    client.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
        client.pass_("wrong")
    client.user("nobody@example.test")
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
        client.pass_(PASSWORD)
    client.quit()


def test_uidls_stable_across_sessions_and_restart(gateway: Gateway) -> None:
    """UIDs come from the Maildir unique name: RETR (new/ -> cur/) and a restart keep them."""
    deliver(gateway, count=3)
    client = login(gateway)
    before = uidls(client)
    retrieved(client, 2)
    client.quit()
    assert uidls_now(gateway) == before

    gateway.stop()  # SIGTERM, then start again on the same directory
    assert not list((gateway.mailbox(ALICE) / "tmp").iterdir())
    gateway.start()
    assert uidls_now(gateway) == before
    client = login(gateway)
    assert [retrieved(client, n)[0] for n in (1, 2, 3)] == [wire_form(p) for p in numbered(gateway, client)]
    client.quit()


def uidls_now(gateway: Gateway) -> dict[int, bytes]:
    client = login(gateway)
    try:
        return uidls(client)
    finally:
        client.quit()


def test_retr_moves_message_to_cur_at_quit(gateway: Gateway) -> None:
    deliver(gateway, count=2)
    client = login(gateway)
    [first, second] = numbered(gateway, client)
    content = first.read_bytes()
    retrieved(client, 1)
    client.top(2, 0)  # TOP is not a retrieval
    assert gateway.new_messages(ALICE) == sorted([first, second])  # nothing moves before UPDATE
    client.quit()
    assert gateway.new_messages(ALICE) == [second]
    [seen] = (gateway.mailbox(ALICE) / "cur").iterdir()
    assert (seen.name, seen.read_bytes()) == (first.name + ":2,S", content)


def test_dele_then_quit_removes_the_file(gateway: Gateway) -> None:
    deliver(gateway, count=2)
    client = login(gateway)
    [first, second] = numbered(gateway, client)
    client.dele(1)
    assert first.exists()  # deletions wait for the UPDATE state
    assert client.quit().startswith(b"+OK")
    assert stored(gateway) == [second]


def test_dele_then_dropped_connection_keeps_the_file(gateway: Gateway) -> None:
    deliver(gateway, count=2)
    before = stored(gateway)
    client = login(gateway)
    client.dele(1)
    client.dele(2)
    client.close()  # no QUIT: no UPDATE state, nothing deleted
    after = wait_for(lambda: try_login(gateway), what="the dropped session's lock to be released")
    assert after.stat()[0] == 2
    after.quit()
    assert stored(gateway) == before


def test_server_stop_says_so_and_keeps_marked_messages(gateway: Gateway) -> None:
    deliver(gateway, count=2)
    client = login(gateway)
    client.dele(1)
    gateway.stop()  # SIGTERM: the session is told, not just dropped
    # Read, don't write: a command sent to the closed socket would earn a reset
    # that throws away the line waiting to be read.
    assert client.file.readline() == b"-ERR [SYS/TEMP] Server shutting down.\r\n"
    assert client.file.readline() == b""  # then the server closed the connection
    client.close()
    assert len(stored(gateway)) == 2  # no UPDATE state: DELE undone


def try_login(gateway: Gateway) -> poplib.POP3 | None:
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    client.stls(context=client_tls())
    client.user(ALICE)
    try:
        client.pass_(PASSWORD)
    except poplib.error_proto as error:
        assert b"[IN-USE]" in error.args[0], error
        client.quit()
        return None
    return client


def test_second_session_is_in_use(gateway: Gateway) -> None:
    deliver(gateway)
    first = login(gateway)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[IN-USE\]"):
        login(gateway)
    implicit = poplib.POP3_SSL("127.0.0.1", gateway.ports["pop3s"], timeout=30, context=client_tls())
    implicit.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[IN-USE\]"):
        implicit.pass_(PASSWORD)  # the lock is the mailbox's, whichever listener asks
    implicit.quit()
    first.quit()
    second = login(gateway)
    assert second.stat()[0] == 1
    second.quit()


def test_implicit_tls_listener(gateway: Gateway) -> None:
    deliver(gateway)
    [path] = stored(gateway)
    client = poplib.POP3_SSL("127.0.0.1", gateway.ports["pop3s"], timeout=30, context=client_tls())
    capabilities = client.capa()
    assert "USER" in capabilities and "STLS" not in capabilities
    client.user(ALICE)
    client.pass_(PASSWORD)
    assert client.stat() == (1, len(wire_form(path)))
    assert retrieved(client, 1) == (wire_form(path), len(wire_form(path)))
    client.quit()


def test_one_megabyte_message_intact(gateway: Gateway) -> None:
    lines = [b"%06d %s" % (i, (b".dot " if i % 7 == 0 else b"") + b"x" * (i % 90)) for i in range(20_000)]
    lines = [b"." + line if i % 11 == 0 else line for i, line in enumerate(lines)]
    body = b"Subject: big\r\n\r\n" + b"".join(line + b"\r\n" for line in lines)
    assert len(body) > 1_000_000
    deliver(gateway, body)
    [path] = stored(gateway)
    client = login(gateway)
    size = int(client.list(1).split()[2])
    message, octets = retrieved(client, 1)
    assert octets == size == len(wire_form(path))
    assert message == wire_form(path) and message.endswith(body)
    client.quit()


def test_raw_wire_is_dot_stuffed_and_crlf(gateway: Gateway) -> None:
    """Below poplib: the exact octets of RETR, stuffed, CRLF only, ending in CRLF.CRLF."""
    deliver(gateway)
    [path] = stored(gateway)
    expected = wire_form(path)  # read now: QUIT moves the file to cur/
    with socket.create_connection(("127.0.0.1", gateway.ports["pop3s"]), timeout=30) as raw:
        with client_tls().wrap_socket(raw) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"+OK")
            sock.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nRETR 1\r\nQUIT\r\n".encode())
            assert reader.readline().startswith(b"+OK")
            assert reader.readline().startswith(b"+OK")
            first = reader.readline()
            assert first.startswith(b"+OK")
            wire = b""
            while not wire.endswith(b"\r\n.\r\n"):
                line = reader.readline()
                assert line, "connection closed mid-message"
                wire += line
            assert reader.readline().startswith(b"+OK")
    stuffed = b"".join(b"." + line if line.startswith(b".") else line for line in expected.splitlines(keepends=True))
    assert wire == stuffed + b".\r\n"
    assert b"\r\n..leading dot\r\n...two dots\r\n..\r\n" in wire
    assert wire.count(b"\n") == wire.count(b"\r\n")


FETCHMAIL = shutil.which("fetchmail")
MDA_SCRIPT = '#!/bin/sh\nexec cat > "$(mktemp "$1/msg.XXXXXXXX")"\n'


@pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail is not on PATH (.ci/run installs it with apt-get)")
def test_fetchmail_retrieves_the_mailbox(gateway: Gateway, tmp_path: Path) -> None:
    """A real POP3 client: STLS, then every message once with --keep, and again with --nokeep."""
    bodies = [BODY, b"Subject: two\r\n\r\n.\r\n..\r\nend\r\n", b"Subject: three\r\n\r\n" + (b"y" * 99 + b"\r\n") * 700]
    for body in bodies:
        deliver(gateway, body)
    expected = sorted(path.read_bytes() for path in stored(gateway))  # Maildir form: LF, as an MDA receives it

    home = tmp_path / "fetchmail-home"
    home.mkdir()
    mda = home / "mda.sh"
    mda.write_text(MDA_SCRIPT)
    mda.chmod(0o700)
    rc = home / ".fetchmailrc"
    rc.write_text(
        "set no syslog\nset no bouncemail\nset invisible\n"
        f"poll 127.0.0.1 protocol POP3 port {gateway.ports['pop3']} uidl\n"
        f'  user "{ALICE}" there with password "{PASSWORD}" is "alice" here\n'
        "  sslproto 'tls1.2+' no sslcertck no rewrite\n"
    )
    rc.chmod(0o600)

    def fetch(keep: str, into: str) -> list[bytes]:
        out = home / into
        out.mkdir()
        result = subprocess.run(
            [FETCHMAIL, "-v", "-f", str(rc), "--pidfile", str(home / "fetchmail.pid"), keep, "--all",
             "--mda", f"{mda} {out}"],
            env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)},
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr + gateway.log()
        assert "STLS" in result.stdout + result.stderr
        return sorted(p.read_bytes() for p in out.iterdir())

    assert fetch("--keep", "kept") == expected
    assert sorted(p.read_bytes() for p in stored(gateway)) == expected
    assert gateway.new_messages(ALICE) == []  # all retrieved: moved to cur/
    assert fetch("--nokeep", "taken") == expected
    assert stored(gateway) == []
