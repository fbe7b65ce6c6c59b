"""SMTP smuggling over a real socket: only CRLF.CRLF ends DATA, so no second message hides in the first.

Each known smuggling sequence (SEC Consult, 2023) is put in the body of one
DATA, followed by a whole second transaction and then a proper end. A raw
socket is used because smtplib would repair the line ends. Whatever the
policy, at most one message may come of it and none may carry the smuggled
"Subject: smuggled" as a header of its own. With `security.bare_newline =
"reject"` the message is refused with 550 5.5.2 and nothing is stored; with
"normalize" (the default) a message whose sequence holds only bare LFs is
stored once, the smuggled text in its body, and one holding a bare CR or a
NUL is refused as with "reject". BDAT chunks are counted, so nothing in
one ends it: they are stored byte-exact, under the same line-ending policy.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, free_port, gateway_config

ALICE = "alice@example.test"
SEQUENCES = {
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-nul-dot-crlf": b"\r\n\x00.\r\n",
}
SMUGGLED = (b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
def start_gateway(root: Path, extra: str = "") -> Gateway:
    """Like conftest's make_gateway(("smtp",)), once per module: each start is a twistd process."""
    ports = {"smtp": free_port()}
    config = root / "mailgate.toml"
    config.write_text(gateway_config(ports, extra))
    (root / "etc").mkdir(exist_ok=True)
    gateway = Gateway(root, config, ports).start()
    gateway.add_user(ALICE)
    return gateway


def stop(gateway: Gateway) -> None:
    if gateway.process is not None and gateway.process.poll() is None:
        gateway.process.kill()
        gateway.process.wait()


@pytest.fixture(scope="module")
def rejecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("reject"), '[security]\nbare_newline = "reject"\n')
    yield gateway
    stop(gateway)


@pytest.fixture(scope="module")
def normalizing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("normalize"))  # bare_newline: the default
    yield gateway
    stop(gateway)


def exchange(gateway: Gateway, data: bytes, timeout: float = 15.0) -> list[str]:
    """Send everything at once (pipelining), read until the server closes; return the reply lines."""
    with socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.endswith(b"\r\n"), received[-200:]
    return received.decode("ascii").split("\r\n")[:-1]


def final_codes(lines: list[str]) -> list[int]:
    return [int(line[:3]) for line in lines if re.match(r"\d{3} ", line)]


def smuggling_session(marker: str, sequence: bytes) -> bytes:
    return (
        b"EHLO client.test\r\n"
        b"MAIL FROM:<sender@remote.test>\r\n"
        b"RCPT TO:<alice@example.test>\r\n"
        b"DATA\r\n"
        b"Subject: outer " + marker.encode() + b"\r\n\r\nhello" + sequence + SMUGGLED
        + b"\r\n.\r\n"  # the proper end, for a server that took "evil\r\n.\r\n" as text
        + b"QUIT\r\n"
    )


def new_messages(gateway: Gateway) -> set[Path]:
    return set(gateway.new_messages(ALICE))


def send_smuggling(gateway: Gateway, name: str) -> tuple[list[str], list[bytes]]:
    """One smuggling attempt; the replies, and the contents of the messages it left."""
    before = new_messages(gateway)
    lines = exchange(gateway, smuggling_session(name, SEQUENCES[name]))
    stored = [path.read_bytes() for path in sorted(new_messages(gateway) - before)]
    return lines, stored


def assert_not_smuggled(lines: list[str], stored: list[bytes]) -> None:
    codes = final_codes(lines)
    assert codes.count(354) == 1, f"a second DATA was accepted: {lines}"
    assert len([c for c in codes if c == 250]) <= 4, lines  # EHLO, MAIL, RCPT and at most one message
    assert len(stored) <= 1, f"{len(stored)} messages from one DATA"
    for message in stored:
        parsed = email.message_from_bytes(message, policy=email.policy.compat32)
        assert parsed.get_all("Subject") and all("smuggled" not in s for s in parsed.get_all("Subject"))
        assert not parsed.get_all("Return-Path") or parsed["Return-Path"] == "<sender@remote.test>"
    assert codes[-1] == 221, lines


@pytest.mark.parametrize("name", SEQUENCES)
def test_at_most_one_message_with_reject_policy(rejecting: Gateway, name: str) -> None:
    lines, stored = send_smuggling(rejecting, name)
    assert_not_smuggled(lines, stored)


@pytest.mark.parametrize("name", SEQUENCES)
def test_at_most_one_message_with_default_policy(normalizing: Gateway, name: str) -> None:
    lines, stored = send_smuggling(normalizing, name)
    assert_not_smuggled(lines, stored)


# The sequences that hold no bare CR and no NUL: with "normalize" their message is taken.
BARE_LF_ONLY = [name for name, sequence in SEQUENCES.items() if not set(sequence.replace(b"\r\n", b"")) & set(b"\r\0")]


def assert_refused(lines: list[str], stored: list[bytes]) -> None:
    assert stored == []
    codes = final_codes(lines)
    assert codes[:4] == [220, 250, 250, 250] and codes[4] == 354, lines
    refusal = [line for line in lines if line.startswith("550 ")]
    assert refusal and refusal[0].startswith("550 5.5.2 "), lines
    assert 250 not in codes[5:], f"something after the DATA was accepted: {lines}"


@pytest.mark.parametrize("name", SEQUENCES)
def test_reject_policy_refuses_the_message_and_stores_nothing(rejecting: Gateway, name: str) -> None:
    assert_refused(*send_smuggling(rejecting, name))


@pytest.mark.parametrize("name", sorted(set(SEQUENCES) - set(BARE_LF_ONLY)))
def test_default_policy_refuses_bare_cr_and_nul(normalizing: Gateway, name: str) -> None:
    assert_refused(*send_smuggling(normalizing, name))


@pytest.mark.parametrize("name", BARE_LF_ONLY)
def test_default_policy_keeps_the_smuggled_text_as_body(normalizing: Gateway, name: str) -> None:
    lines, stored = send_smuggling(normalizing, name)
    [message] = stored
    assert sum(line.startswith("250 2.0.0 Ok: queued as") for line in lines) == 1, lines
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    assert parsed["Subject"] == f"outer {name}"
    body = parsed.get_payload(decode=False)
    assert "MAIL FROM:<evil@x.test>" in body and "Subject: smuggled" in body and "evil" in body
    assert b"\r" not in message  # stored with LF line ends


def test_dot_stuffed_lines_are_stored_once_unstuffed(rejecting: Gateway) -> None:
    before = new_messages(rejecting)
    lines = exchange(rejecting, (
        b"EHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: dots\r\n\r\nfirst\r\n..\r\n.x\r\n...\r\nlast\r\n.\r\nQUIT\r\n"
    ))
    assert final_codes(lines) == [220, 250, 250, 250, 354, 250, 221]
    [path] = new_messages(rejecting) - before
    assert path.read_bytes().endswith(b"\nSubject: dots\n\nfirst\n.\nx\n..\nlast\n")


def test_session_goes_on_after_a_refused_message(rejecting: Gateway) -> None:
    """The 550 ends only that transaction: a clean second one in the same session is stored."""
    before = new_messages(rejecting)
    lines = exchange(rejecting, (
        b"EHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: bad\r\n\r\nbare\nline\r\n.\r\n"
        b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: good\r\n\r\nfine\r\n.\r\nQUIT\r\n"
    ))
    assert final_codes(lines) == [220, 250, 250, 250, 354, 550, 250, 250, 354, 250, 221], lines
    [path] = new_messages(rejecting) - before
    assert b"Subject: good" in path.read_bytes()


def test_smtplib_sendmail_with_lf_line_ends_is_stored(normalizing: Gateway) -> None:
    """The common Python way of sending (#12, item 15): `msg.as_bytes()` has LF line ends and
    smtplib sends bytes as they are. With the default policy it is taken and stored once."""
    import smtplib
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "sender@remote.test", ALICE, "from a script"
    message.set_content("line one\n.line with a dot\nline three\n")
    assert b"\r" not in message.as_bytes()
    before = new_messages(normalizing)
    with smtplib.SMTP("127.0.0.1", normalizing.ports["smtp"], timeout=15) as client:
        refused = client.sendmail("sender@remote.test", [ALICE], message.as_bytes())
    assert refused == {}
    [path] = new_messages(normalizing) - before
    stored = path.read_bytes()
    assert b"\n\nline one\n.line with a dot\nline three\n" in stored, stored
    assert b"\r" not in stored


# --- BDAT (RFC 3030): counted chunks, so nothing in one ends it; the DATA line-ending policy holds -----

CHUNKED = b"Subject: chunked\r\n\r\nfirst\r\n.\r\n..dots kept\r\n" + SMUGGLED + b"last line\r\n"


def bdat_session(message: bytes, cuts: list[int]) -> bytes:
    """EHLO, one transaction whose message goes in BDAT chunks cut at `cuts`, the last with LAST; QUIT."""
    bounds = [0, *cuts, len(message)]
    chunks = [message[a:b] for a, b in zip(bounds, bounds[1:])]
    commands = b"".join(b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
                        for i, c in enumerate(chunks))
    return (b"EHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
            + commands + b"QUIT\r\n")


@pytest.mark.parametrize("gateway_name", ["rejecting", "normalizing"])
def test_bdat_chunks_are_stored_byte_exact(gateway_name: str, request: pytest.FixtureRequest) -> None:
    gateway: Gateway = request.getfixturevalue(gateway_name)
    before = new_messages(gateway)
    cuts = [5, 21, 22, 40, len(CHUNKED) - 3]  # one CRLF split between two chunks
    lines = exchange(gateway, bdat_session(CHUNKED, cuts))
    assert "250-CHUNKING" in lines, lines
    assert final_codes(lines) == [220] + [250] * (3 + len(cuts) + 1) + [221], lines
    [path] = new_messages(gateway) - before
    stored = path.read_bytes()
    header, body = stored.split(b"\nSubject: chunked\n", 1)
    assert b"Subject: chunked\n" + body == CHUNKED.replace(b"\r\n", b"\n")  # no unstuffing, no end in it
    # Only the server's own fields above it: the trace fields and the checks' Authentication-Results.
    assert all(line.startswith((b"Return-Path:", b"Received:", b"Authentication-Results:", b" ", b"\t"))
               for line in header.split(b"\n"))


def test_bdat_with_a_bare_lf_is_stored_by_default(normalizing: Gateway) -> None:
    before = new_messages(normalizing)
    message = b"Subject: bare lf\r\n\r\none\ntwo\r\n"
    lines = exchange(normalizing, bdat_session(message, [10]))
    assert final_codes(lines)[-2:] == [250, 221], lines
    [path] = new_messages(normalizing) - before
    assert path.read_bytes().endswith(b"\nSubject: bare lf\n\none\ntwo\n")


def test_bdat_with_a_bare_lf_is_refused_by_reject(rejecting: Gateway) -> None:
    before = new_messages(rejecting)
    lines = exchange(rejecting, bdat_session(b"Subject: bare lf\r\n\r\none\ntwo\r\n", [10]))
    assert [line for line in lines if line.startswith("550 ")][0].startswith("550 5.5.2 "), lines
    assert new_messages(rejecting) == before


@pytest.mark.parametrize("name", ["cr-dot-crlf", "crlf-nul-dot-crlf"])
def test_bdat_with_a_bare_cr_or_nul_is_refused_by_default(normalizing: Gateway, name: str) -> None:
    before = new_messages(normalizing)
    lines = exchange(normalizing, bdat_session(b"Subject: x\r\n\r\nhello" + SEQUENCES[name] + b"end\r\n", []))
    assert final_codes(lines)[-2:] == [550, 221], lines
    assert new_messages(normalizing) == before
