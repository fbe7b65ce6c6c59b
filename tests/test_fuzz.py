"""Property tests over hostile input: SMTP and POP3 sessions, the path parser, the config loader.

Whatever a client sends, in whatever pieces, no exception escapes the
protocol, nothing crashes behind it (no logged failure), and every line
written back is a well-formed reply. The address parser only ever raises
AddressError and what it accepts is safe as a Maildir path; the config
loader only ever raises ConfigError, one `key.path: reason` line per problem.
"""

from __future__ import annotations

import base64
import copy
import itertools
import math
import os
import re
import shutil
import tempfile
import tomllib
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.logger import globalLogPublisher

from mailgate.core.addresses import AddressError, normalize_mailbox, parse_command_path
from mailgate.core.dsn import DSNError, check_envid, check_notify, check_orcpt, check_ret, xtext_decode, xtext_encode
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.config import ConfigError, parse_config
from mailgate.store.maildir_writer import mailbox_path
from mailgate.pop3.session import POP3Factory
from mailgate.smtp.chunk_reader import ChunkReader
from tests.support.pop3_session import (
    FakeAccounts,
    FakeReactor,
    TLSCapableTransport,
    message_name,
)
from tests.support.smtp_session import Client, Server, TLSStringTransport

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    """Few enough examples that each test stays within a few seconds."""
    return settings(FUZZ, max_examples=examples)

# --- shared ------------------------------------------------------------------


@contextmanager
def logged_failures() -> Iterator[list[dict]]:
    """Failures logged meanwhile: each one is an exception some code path swallowed."""
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
    finally:
        globalLogPublisher.removeObserver(observe)


def describe(failures: list[dict]) -> str:
    return "\n".join(event["log_failure"].getTraceback() for event in failures)


@st.composite
def chunked(draw: Any, streams: st.SearchStrategy[bytes]) -> list[bytes]:
    """A stream cut at random places, as TCP may deliver it (single bytes included)."""
    stream = draw(streams)
    if len(stream) > 1 and draw(st.integers(0, 9)) == 0:
        return [stream[i : i + 1] for i in range(len(stream))]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """A strategy picked in proportion to its weight: hostile input, but mostly hostile *commands*.

    (st.one_of drops repeated branches, so weights can't be had by repeating them.)
    """
    indices = [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indices).flatmap(lambda index: choices[index][1])


LINE_ENDS = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"\x00\r\n"])
JUNK = st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass"))
LONG = st.integers(400, 1200).map(lambda n: b"A" * n)
ODD_BYTES = st.sampled_from([b"", b" ", b"\x00", b"\t", b"\xc3\xa9", b"\xff", b"\x1b[2J", b"\x7f", b"\x01",
                             b"=", b"<", b">", b":", b"\r", b"\x0b", b"\x0c"])
WORDS = weighted((6, ODD_BYTES), (4, JUNK), (1, LONG), (3, st.binary(max_size=20)))

# --- SMTP --------------------------------------------------------------------

SMTP_VERBS = [b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"AUTH", b"STARTTLS", b"VRFY", b"EXPN",
              b"RSET", b"NOOP", b"QUIT", b"HELP", b"BDAT", b"TURN", b"ehlo", b"mail", b"Rcpt"]
KNOWN_SMTP_CODES = {211, 214, 220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 451, 452, 454, 455,
                    500, 501, 502, 503, 504, 530, 534, 535, 538, 550, 551, 552, 553, 554, 555}
SMTP_REPLY_LINE = re.compile(rb"(\d{3})([ -])([\x20-\x7e]*)")

PATHS = weighted(
    (6, st.sampled_from([b"<alice@example.test>", b"<bob@example.test>", b"<>", b"<postmaster>",
                         b"<team@example.test>", b"<x@remote.test>", b"<../../etc@example.test>",
                         b"<a/b@example.test>", b'<"../x"@example.test>', b'<".."@example.test>',
                         b"<@a.test,@b.test:alice@example.test>", b"<a\x00b@example.test>", b"alice@example.test",
                         b"<alice@example.test", b" <a@b.test>", b"<" + b"a" * 65 + b"@example.test>",
                         "<josé@example.test>".encode(), "<JOSÉ@Bücher.example>".encode(),
                         b"<a@xn--bcher-kva.example>", b"<a@xn--zz.test>", "<a\u202e@example.test>".encode(),
                         "<\u00e9\u0301@example.test>".encode(), b"<\xc3@example.test>", "<\"jo s\u00e9\"@x.test>".encode()])),
    (2, WORDS.map(lambda w: b"<" + w + b"@example.test>")),
    (1, WORDS),
)
DSN_PARAMS = st.sampled_from([
    b"RET=HDRS", b"RET=FULL", b"RET=hdrs", b"RET=", b"RET", b"RET=BODY", b"ENVID=QQ+2B1", b"ENVID=a+zz",
    b"ENVID=" + b"x" * 101, b"NOTIFY=NEVER", b"NOTIFY=SUCCESS,FAILURE,DELAY", b"NOTIFY=never,success",
    b"NOTIFY=", b"NOTIFY=SUCCESS,SUCCESS", b"ORCPT=rfc822;bob+2Bx@remote.test", b"ORCPT=utf-8;jos+C3+A9@x.test",
    b"ORCPT=rfc822;", b"ORCPT=;a", b"ORCPT=rfc822;a+1", b"ORCPT=rfc822;" + b"a" * 500])
XTEXTS = st.binary(max_size=30).map(lambda b: b"".join(b"+%02X" % c if c in b"+= " or not 33 <= c <= 126
                                                       else bytes([c]) for c in b))
PARAMS = st.lists(weighted((3, st.sampled_from([b"SIZE=10", b"SIZE=99999999999", b"BODY=8BITMIME", b"BODY=junk",
                                                 b"SMTPUTF8", b"X=\x01", b"=", b"\x00", b"AUTH=<>"])),
                           (3, DSN_PARAMS),
                           (1, XTEXTS.map(lambda x: b"ENVID=" + x)),
                           (1, XTEXTS.map(lambda x: b"ORCPT=rfc822;" + x)),
                           (1, WORDS)), max_size=3)


def _plain(user: bytes, password: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0" + password)


AUTH_ARGS = st.one_of(
    st.sampled_from([b"PLAIN", b"LOGIN", b"CRAM-MD5", b"PLAIN =", b"PLAIN *", b"PLAIN !!!!",
                     b"PLAIN " + _plain(b"alice@example.test", b"secret"),
                     b"PLAIN " + _plain(b"alice@example.test", b"wrong"),
                     b"LOGIN " + base64.b64encode(b"alice@example.test")]),
    WORDS.map(lambda w: b"PLAIN " + w),
)
SASL_LINES = st.sampled_from([b"*", base64.b64encode(b"alice@example.test"), base64.b64encode(b"secret"),
                              _plain(b"alice@example.test", b"secret"), b"=", b"not base64"])


@st.composite
def smtp_command(draw: Any) -> bytes:
    verb = draw(weighted((4, st.sampled_from([b"MAIL", b"RCPT"])), (4, st.sampled_from(SMTP_VERBS)), (1, WORDS)))
    upper = verb.upper()
    if upper == b"MAIL":
        argument = b"FROM:" + draw(PATHS) + b"".join(b" " + p for p in draw(PARAMS))
    elif upper == b"RCPT":
        argument = b"TO:" + draw(PATHS) + b"".join(b" " + p for p in draw(PARAMS))
    elif upper == b"AUTH":
        argument = draw(AUTH_ARGS)
    elif upper in (b"VRFY", b"EXPN"):
        argument = draw(PATHS)
    elif upper == b"BDAT":
        return draw(bdat_chunk())
    elif upper in (b"EHLO", b"HELO"):
        argument = draw(weighted((3, st.sampled_from([b"client.test", b""])), (1, WORDS)))
    else:
        argument = draw(weighted((3, st.just(b"")), (1, WORDS)))
    separator = draw(st.sampled_from([b" "] * 6 + [b"", b"  ", b"\t"]))
    return verb + (separator + argument if argument else b"") + draw(LINE_ENDS)


@st.composite
def data_body(draw: Any) -> bytes:
    """What follows a DATA: text lines with mixed endings, then an end (or none)."""
    lines = draw(st.lists(weighted((3, st.sampled_from([b"Subject: x", b"", b".", b"..", b".x", b"Received: x",
                                                        b"MAIL FROM:<e@x.test>", b"\x00", b"A" * 998, b"A" * 999])),
                                   (1, WORDS)), max_size=8))
    body = b"".join(line + draw(LINE_ENDS) for line in lines)
    return body + draw(st.sampled_from([b"\r\n.\r\n"] * 4 + [b".\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\n", b""]))


BDAT_ARGS = weighted((4, st.integers(0, 40).map(lambda n: b"%d" % n)),
                     (1, st.sampled_from([b"", b"-1", b"x", b"5 LASTX", b"5  LAST", b"5 last", b"0x10", b"+5",
                                          b"99999999999999999999", b"5 LAST 6", b"\xc3\xa9"])))


@st.composite
def bdat_chunk(draw: Any) -> bytes:
    """A BDAT command and (mostly) its chunk: text with mixed line ends, an odd count now and then."""
    argument = draw(BDAT_ARGS)
    if argument.isdigit() and draw(st.booleans()):
        argument += draw(st.sampled_from([b" LAST", b" last", b" LAST"]))
    body = draw(data_body()) + draw(st.binary(max_size=8))
    words = argument.split()
    count = int(words[0]) if words and words[0].isdigit() else 0
    return b"BDAT " + argument + draw(LINE_ENDS) + body[:count]


TRANSACTION = b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
BDAT_TRANSACTION = b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
SMTP_PIECES = weighted(
    (8, smtp_command()),
    (2, st.just(TRANSACTION)),
    (3, data_body()),
    (2, st.tuples(st.just(BDAT_TRANSACTION), st.lists(bdat_chunk(), min_size=1, max_size=3)).map(
        lambda t: t[0] + b"".join(t[1]))),
    (1, st.sampled_from([b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"RSET\r\n", b"QUIT\r\n"])),
    (1, SASL_LINES.map(lambda s: s + b"\r\n")),
    (1, st.sampled_from([b"NOOP " + b"A" * 505 + b"\r\n", b"NOOP " + b"A" * 506 + b"\r\n"])),
)
GRAMMAR_STREAMS = st.tuples(st.sampled_from([b"EHLO client.test\r\n"] * 3 + [b"HELO c\r\n", b""]),
                            st.lists(SMTP_PIECES, max_size=14)).map(lambda t: t[0] + b"".join(t[1]))


def check_smtp_output(greeting: bytes, written: bytes, closed: bool) -> None:
    """Every line a reply line, multi-line replies closed, a close said with 221 or 421."""
    assert re.fullmatch(rb"220 [\x20-\x7e]*\r\n", greeting), greeting
    assert written == b"" or written.endswith(b"\r\n"), written[-80:]
    lines = written.split(b"\r\n")[:-1]
    continued: bytes | None = None  # the code of a multi-line reply still open
    for line in lines:
        assert len(line) + 2 <= 512, f"reply line of {len(line) + 2} octets"
        match = SMTP_REPLY_LINE.fullmatch(line)
        assert match is not None, f"not a reply line: {line!r}"
        assert int(match[1]) in KNOWN_SMTP_CODES, line
        assert continued in (None, match[1]), f"reply {match[1]!r} inside a multi-line {continued!r}"
        continued = match[1] if match[2] == b"-" else None
    assert continued is None, "multi-line reply left open"
    if closed:
        assert lines and lines[-1][:3] in (b"221", b"421"), f"closed after {lines[-1:]!r}"


class SMTPHarness:
    """One Server (real plugins, recording deliverer, Clock) for many sessions, with AUTH wired."""

    def __init__(self, tmp_path: Path) -> None:
        self.server = Server(
            tmp_path, tls_options=object(), auth=True,
            security={"vrfy": "all", "expn": "all"},
            lists={"team@example.test": {"members": ["alice@example.test", "carol@remote.test"]}},
        )
        self._ips = itertools.count(1)

    def session(self, chunks: list[bytes]) -> None:
        n = next(self._ips)
        ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"  # a new one each time: no connection_rate carry-over
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", ip, 1))
        client: Client = self.server.connect(transport=transport)
        try:
            with logged_failures() as failures:
                for chunk in chunks:
                    if transport.disconnecting:
                        break  # TCP reads nothing more after loseConnection
                    client.protocol.dataReceived(chunk)
                self._settle()
                check_smtp_output(client.greeting, transport.value(), transport.disconnecting)
                if not transport.disconnecting:
                    self._end_chunk(client)
                    # Still open, so still alive: end any DATA, line or AUTH exchange; QUIT must be answered.
                    # The line end goes first, on its own: if it completes a STARTTLS, the handshake
                    # discards whatever came with it (RFC 3207 4.2), and that must not be the QUIT.
                    client.protocol.dataReceived(b"\r\n")
                    self._settle()
                    client.protocol.dataReceived(b".\r\nQUIT\r\n")
                    self._settle()
                    assert transport.disconnecting, transport.value()[-200:]
                    check_smtp_output(client.greeting, transport.value(), closed=True)
            assert not failures, describe(failures)
        finally:
            client.lose()

    def _end_chunk(self, client: Client) -> None:
        """Send what a BDAT chunk still lacks, so the QUIT after it is read as a command."""
        reader = client.protocol._reader
        if isinstance(reader, ChunkReader) and reader.remaining:
            client.protocol.dataReceived(b"x" * reader.remaining)
            self._settle()

    def _settle(self) -> None:
        for _ in range(3):  # AUTH failure delays are at most 8 s
            self.server.clock.advance(9)


@pytest.fixture
def smtp(tmp_path: Path, fast_hashes: None) -> SMTPHarness:
    return SMTPHarness(tmp_path)


def test_smtp_binary_streams(smtp: SMTPHarness) -> None:
    @fuzz(150)
    @given(chunked(st.binary(max_size=1500) | st.binary(max_size=600).map(lambda b: b"EHLO x\r\n" + b)))
    def run(chunks: list[bytes]) -> None:
        smtp.session(chunks)

    run()


def test_smtp_command_streams(smtp: SMTPHarness) -> None:
    @fuzz(300)
    @given(chunked(GRAMMAR_STREAMS))
    def run(chunks: list[bytes]) -> None:
        smtp.session(chunks)

    run()


def test_smtp_harness_sees_a_delivery(smtp: SMTPHarness) -> None:
    """The grammar can reach DATA: a plain transaction through the same harness is delivered."""
    smtp.session([b"EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n"])
    assert len(smtp.server.deliverer.calls) == 1


def test_smtp_harness_sees_a_chunked_delivery(smtp: SMTPHarness) -> None:
    """The grammar's BDAT pieces can deliver: a chunked transaction through the same harness is."""
    smtp.session([b"EHLO c\r\n" + BDAT_TRANSACTION + b"BDAT 4\r\nhi\r\nBDAT 0 LAST\r\n"])
    assert len(smtp.server.deliverer.calls) == 1


def test_smtp_harness_ends_a_chunk_left_open(smtp: SMTPHarness) -> None:
    smtp.session([b"EHLO c\r\n" + BDAT_TRANSACTION + b"BDAT 4000 LAST\r\nhi\r\n"])


# --- POP3 --------------------------------------------------------------------

POP3_VERBS = [b"USER", b"PASS", b"AUTH", b"CAPA", b"STLS", b"QUIT", b"STAT", b"LIST", b"UIDL", b"RETR",
              b"TOP", b"DELE", b"NOOP", b"RSET", b"APOP", b"user", b"retr"]
POP3_ARGS = weighted(
    (4, st.sampled_from([b"", b"", b"1", b"2", b"3", b"0", b"-1", b"1 0", b"1 2", b"2 999999999", b"99999999999",
                         b"4", b" 1", b"1 ", b"alice@example.test", b"correct horse", b"PLAIN", b"PLAIN =",
                         b"PLAIN *", b"PLAIN " + _plain(b"alice@example.test", b"correct horse"),
                         b"PLAIN " + _plain(b"alice@example.test", b"wrong")])),
    (1, WORDS),
)
POP3_LOGIN = b"USER alice@example.test\r\nPASS correct horse\r\n"
MESSAGES = [
    b"Subject: one\n\nhello\n.\n..\n.x\n",
    b"Subject: two\nX-Long: " + b"y" * 900 + b"\n\n" + b"line\n" * 40,
    b"Subject: three\n\n",
]


@st.composite
def pop3_line(draw: Any) -> bytes:
    verb = draw(weighted((6, st.sampled_from(POP3_VERBS)), (1, WORDS)))
    argument = draw(POP3_ARGS)
    return verb + (b" " + argument if argument else b"") + draw(LINE_ENDS)


POP3_STREAMS = st.tuples(
    st.sampled_from([POP3_LOGIN, POP3_LOGIN, POP3_LOGIN, b"AUTH PLAIN\r\n" + _plain(b"alice@example.test",
                                                                                     b"correct horse") + b"\r\n", b""]),
    st.lists(weighted((12, pop3_line()), (1, st.just(b"AUTH PLAIN\r\n")),
                      (1, st.integers(8000, 9000).map(lambda n: b"N" * n + b"\r\n"))), max_size=12),
).map(lambda t: t[0] + b"".join(t[1]))
POP3_STATUS = re.compile(rb"(?:\+OK|-ERR)(?: [\x20-\x7e]*)?|\+ [\x20-\x7e]*")


class POP3Harness:
    """A fresh Maildir with three messages and a POP3 factory on a fake reactor, per session."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp()
        self.reactor = FakeReactor()
        self.factory = POP3Factory(
            accounts=FakeAccounts({"alice@example.test": "correct horse"}), maildir_root=self.root,
            hostname="mail.example.test", tls_options=object(), plaintext_auth="always",
            reactor=self.reactor, throttle=AuthThrottle(self.reactor),
        )
        box = os.path.join(self.root, "example.test", "alice")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(box, sub))
        for n, data in enumerate(MESSAGES):
            Path(box, "new", message_name(n, data)).write_bytes(data)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = TLSCapableTransport()
        self.protocol.makeConnection(self.transport)

    def close(self) -> None:
        self.protocol.connectionLost(None)
        shutil.rmtree(self.root, ignore_errors=True)

    def feed(self, data: bytes) -> bytes:
        """Feed bytes, let any message stream and delayed answer finish; return what was written."""
        self.transport.clear()
        self.protocol.dataReceived(data)
        self.settle()
        return self.transport.value()

    def settle(self) -> None:
        for _ in range(4):
            while self.transport.producer is not None:
                self.transport.producer.resumeProducing()
            self.reactor.advance(3)  # auth failure delays: at most 8 s


def is_multiline(line: bytes) -> bool:
    """Whether a +OK answer to this command line is followed by lines ending in ".", as a client knows."""
    command, _, argument = line.partition(b" ")
    name = command.upper()
    if name in (b"CAPA", b"RETR", b"TOP"):
        return True
    if name in (b"LIST", b"UIDL", b"AUTH"):
        return not argument.strip()
    return False


def parse_pop3_answer(output: bytes, line: bytes, continuation: bool) -> bool:
    """Check the answer to one client line; return whether it was a SASL "+ " continuation."""
    assert output.endswith(b"\r\n"), f"{line!r} -> {output[-80:]!r}"
    lines = output.split(b"\r\n")[:-1]
    status = lines[0]
    assert POP3_STATUS.fullmatch(status), f"{line!r} -> bad status line {status!r}"
    assert len(status) + 2 <= 512
    rest = lines[1:]
    if status.startswith(b"+OK") and not continuation and is_multiline(line):
        assert rest and rest[-1] == b".", f"{line!r} -> multi-line answer without its end: {rest[-3:]!r}"
        for body in rest[:-1]:
            assert re.fullmatch(rb"[\x20-\x7e\t]*", body), body[:80]
            assert not body.startswith(b".") or body.startswith(b".."), f"unstuffed dot line {body!r}"
        return False
    # a status line alone, except after PASS/AUTH where a delayed answer may close the session
    assert all(POP3_STATUS.fullmatch(more) for more in rest), f"{line!r} -> {lines!r}"
    return status.startswith(b"+ ")


def pop3_lines(stream: bytes) -> list[bytes]:
    """The lines the server sees: split at LF, each with its LF (the last one maybe partial)."""
    parts = stream.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def test_pop3_command_streams() -> None:
    """Line by line (each in random pieces), every answer is well-formed for its command."""

    @fuzz(150)
    @given(POP3_STREAMS, st.data())
    def run(stream: bytes, data: st.DataObject) -> None:
        session = POP3Harness()
        try:
            assert re.fullmatch(rb"\+OK [\x20-\x7e]*\r\n", session.transport.value())
            continuation = False
            with logged_failures() as failures:
                for line in pop3_lines(stream):
                    if session.transport.disconnecting:
                        break
                    pieces = data.draw(chunked(st.just(line)))
                    session.transport.clear()
                    for piece in pieces:
                        session.protocol.dataReceived(piece)
                    session.settle()
                    output = session.transport.value()
                    if not line.endswith(b"\n"):  # a last, partial line: no answer unless too long
                        assert output in (b"", b"-ERR Line too long.\r\n"), (line[:80], output)
                        continue
                    text = line.rstrip(b"\n").rstrip(b"\r")
                    continuation = parse_pop3_answer(output, text, continuation)
            assert not failures, describe(failures)
        finally:
            session.close()

    run()


def test_pop3_binary_streams() -> None:
    """Arbitrary bytes in arbitrary pieces: no exception, only printable CRLF lines written."""

    @fuzz(150)
    @given(chunked(st.binary(max_size=1500) | POP3_STREAMS))
    def run(chunks: list[bytes]) -> None:
        session = POP3Harness()
        try:
            with logged_failures() as failures:
                for chunk in chunks:
                    if session.transport.disconnecting:
                        break
                    session.protocol.dataReceived(chunk)
                    session.settle()
            assert not failures, describe(failures)
            written = session.transport.value()
            assert written.endswith(b"\r\n")
            for line in written.split(b"\r\n")[:-1]:
                assert re.fullmatch(rb"[\x20-\x7e\t]*", line) and len(line) <= 1000, line[:80]
        finally:
            session.close()

    run()


def test_pop3_harness_retrieves_stuffed_lines() -> None:
    """The fixed messages reach the client dot-stuffed, so the checks above see real bodies."""
    session = POP3Harness()
    try:
        session.feed(POP3_LOGIN)
        output = session.feed(b"RETR 1\r\n")
        assert output.endswith(b"hello\r\n..\r\n...\r\n..x\r\n.\r\n")
        assert not parse_pop3_answer(output, b"RETR 1", False)
    finally:
        session.close()


# --- addresses ---------------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LOCAL_ATOMS = st.sampled_from(["alice", "a", "..", ".", "", "/", "a/b", "\x00", "\n", "\r", "\x7f", "~", "-",
                               "a.b", "a..b", '".."', '"a/b"', '"\\/"', '"a\\"b"', '" "', '"."', '"\x01"', "%",
                               "é", "A" * 65, "\\", "@", '"', "\t", "\x1b", "José", "e\u0301", "\u202e", "\u00a0",
                               "\u2028", "\x85", "\ufeff", "ß", "İ", "\U0001f600", "\ud800", "\u00e9" * 33])
DOMAIN_ATOMS = st.sampled_from(["example.test", "example.test.", ".example.test", "..", ".", "", "[..]",
                                "[127.0.0.1]", "[a/b]", "a/b", "x..y", "-x.test", "é.test", "a" * 64 + ".test",
                                "[\x00]", "example.test/..", "[IPv6:::1]", "[.]", "[/]", "a-.test", "bücher.example",
                                "xn--bcher-kva.example", "xn--zz.test", "ÄÖ.test", "例え.テスト", "a\u200d.test",
                                "xn--.test", "\u0301a.test", "ß.test", "a.b\u3002c"])
# what paths are made of, plus the characters that would make them dangerous
PATH_TEXT = st.text(st.sampled_from("abcAZ09.-_+=~%!#$&'*/?^`{|}\"\\ @,:[]<>\x00\x01\n\r\t\x7fé"), max_size=8)


@st.composite
def mailbox_texts(draw: Any) -> str:
    local = "".join(draw(st.lists(weighted((3, LOCAL_ATOMS), (2, PATH_TEXT), (1, st.text(max_size=4))),
                                  min_size=1, max_size=4)))
    domain = "".join(draw(st.lists(weighted((3, DOMAIN_ATOMS), (2, PATH_TEXT), (1, st.text(max_size=4))),
                                   min_size=1, max_size=3)))
    route = draw(st.sampled_from(["", "", "", "@a.test:", "@a.test,@b.test:", "@../x:", "@a.test,", ":", "@[..]:"]))
    return route + local + draw(st.sampled_from(["@", "@", "@", "", "@@"])) + domain


ATEXT = "abcxyzABCXYZ0189!#$%&'*+=?^_`{|}~-"
ATOM = st.text(st.sampled_from(ATEXT), min_size=1, max_size=5)
LABEL = st.text(st.sampled_from("abz09-"), min_size=1, max_size=6)


@st.composite
def near_valid_mailboxes(draw: Any) -> str:
    """RFC 5321 mailboxes, mostly valid: quoted strings and literals of any printable content."""
    quoted = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8).map(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    local = draw(weighted((3, st.lists(ATOM, min_size=1, max_size=3).map(".".join)), (2, quoted)))
    literal = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="[]\\"),
                      min_size=1, max_size=10).map(lambda t: f"[{t}]")
    domain = draw(weighted((3, st.lists(LABEL, min_size=1, max_size=3).map(".".join)), (1, literal)))
    route = draw(st.sampled_from(["", "", "@a.test:", "@a.test,@b.test:"]))
    return route + local + "@" + domain + draw(st.sampled_from(["", "", "."]))


@st.composite
def command_arguments(draw: Any) -> tuple[str, str]:
    prefix = draw(st.sampled_from(["FROM", "TO"]))
    head = draw(st.sampled_from([prefix] * 4 + [prefix.lower(), prefix + " ", "", "X"]))
    path = draw(weighted((3, mailbox_texts()), (3, near_valid_mailboxes()), (1, st.text(max_size=40))))
    params = draw(st.lists(weighted((3, st.sampled_from(["SIZE=1", "BODY=8BITMIME", "=", "X=\x00", "Y"])),
                                    (1, st.text(max_size=8))), max_size=2))
    close = draw(st.sampled_from([">"] * 4 + ["", ">>"]))
    space = draw(st.sampled_from(["", "", " ", "  "]))
    return head + ":" + space + "<" + path + close + " ".join(["", *params]), prefix


def check_safe_address(address: str, root: str) -> None:
    local, _, domain = address.rpartition("@")
    assert local and domain, address
    for part in (local, domain):
        assert "/" not in part and not CONTROL.search(part) and not part.startswith("."), address
    assert all(char.isascii() or unicodedata.category(char)[0] not in "CZ" for char in address), address
    assert unicodedata.is_normalized("NFC", address) and domain.isascii(), address  # one form: NFC, A-labels
    assert len(local.encode()) <= 64 and len(address) <= 254, address
    path = mailbox_path(root, address)  # parser and store agree: no ValueError for an accepted address
    real_root = os.path.realpath(root)
    assert os.path.commonpath([real_root, os.path.realpath(path)]) == real_root, path
    assert os.path.realpath(path) != real_root


def test_address_parser_arbitrary_text(tmp_path: Path) -> None:
    @fuzz(600)
    @given(command_arguments() | st.tuples(st.text(max_size=80), st.sampled_from(["FROM", "TO"])))
    def run(case: tuple[str, str]) -> None:
        argument, prefix = case
        try:
            path, params = parse_command_path(argument, prefix)
        except AddressError:
            return
        assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", name) for name in params), params
        try:
            address = normalize_mailbox(path)
        except AddressError:
            return
        check_safe_address(address, str(tmp_path))

    run()


def test_normalize_mailbox_arbitrary_paths(tmp_path: Path) -> None:
    @fuzz(600)
    @given(weighted((3, mailbox_texts()), (3, near_valid_mailboxes()), (1, st.text(max_size=300))))
    def run(path: str) -> None:
        try:
            address = normalize_mailbox(path)
        except AddressError:
            return
        check_safe_address(address, str(tmp_path))

    run()


# --- DSN parameters (RFC 3461) ------------------------------------------------

DSN_CHECKS = {"NOTIFY": check_notify, "ORCPT": check_orcpt, "RET": check_ret, "ENVID": check_envid}


def test_dsn_parameter_checks_arbitrary_values() -> None:
    """Each check only ever raises DSNError, and what it passes is printable ASCII without "=" past
    the keyword, so it can be passed on in a command line as it is."""
    @fuzz(400)
    @given(st.sampled_from(sorted(DSN_CHECKS)),
           weighted((2, XTEXTS.map(lambda b: b.decode("ascii"))),
                    (2, DSN_PARAMS.map(lambda b: b.decode().partition("=")[2])),
                    (1, st.text(max_size=120))))
    def run(name: str, value: str) -> None:
        try:
            checked = DSN_CHECKS[name](value)
        except DSNError:
            return
        assert checked and all("!" <= c <= "~" for c in checked) and "=" not in checked, checked

    run()


def test_xtext_round_trips_any_text() -> None:
    @fuzz(300)
    @given(st.text(max_size=60))
    def run(text: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return  # a lone surrogate is no text a client can send
        encoded = xtext_encode(text)
        assert check_envid(encoded) if encoded and len(encoded) <= 100 else True
        assert xtext_decode(encoded) == text

    run()


# --- PROXY protocol headers ---------------------------------------------------

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_STREAMS = weighted(
    (2, st.binary(max_size=300)),
    (2, st.tuples(st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"UDP4", b"tcp4", b""]),
                  st.lists(weighted((3, st.sampled_from([b"203.0.113.7", b"::1", b"2001:db8::7", b"25", b"0",
                                                         b"65536", b"-1", b"x"])), (1, WORDS)), max_size=5),
                  LINE_ENDS, st.binary(max_size=20)).map(
        lambda t: b"PROXY " + t[0] + b"".join(b" " + w for w in t[1]) + t[2] + t[3])),
    (2, st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 60), st.binary(max_size=60)).map(
        lambda t: V2_SIGNATURE + bytes([t[0], t[1]]) + t[2].to_bytes(2, "big") + t[3])),
)


def test_proxy_header_arbitrary_streams() -> None:
    """Whatever a balancer's network sends, in whatever pieces: no exception escapes; the
    connection is aborted, still waits, or is the server's with an IP address for its client."""
    from ipaddress import ip_address, ip_network

    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from mailgate.net.proxy_protocol import ProxyHeaderFactory

    @fuzz(400)
    @given(chunked(PROXY_STREAMS))
    def run(chunks: list[bytes]) -> None:
        factory = ProxyHeaderFactory(Factory.forProtocol(Protocol), [ip_network("10.0.0.0/8")], Clock(), "mx")
        peer = IPv4Address("TCP", "10.0.0.1", 5555)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        with logged_failures() as failures:
            for chunk in chunks:
                if transport.disconnecting:
                    break
                protocol.dataReceived(chunk)
        assert not failures, describe(failures)
        wrapped = protocol.wrappedProtocol
        if wrapped.connected:
            ip_address(protocol.getPeer().host)  # never a word a v1 header put there
        protocol.connectionLost(None)

    run()


# --- configuration -------------------------------------------------------------

DEFAULT_DOCUMENT = tomllib.loads((ROOT / "etc" / "mailgate.toml").read_text())
_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*")'
PROBLEM = re.compile(rf"{_KEY}(?:\[\d+\]|\.{_KEY})*: \S.*")
SECTIONS = {  # top-level key -> (shape, its keys), so generated documents get past the first check
    "server": ("table", ["hostname", "state_dir"]),
    "listen": ("array", ["name", "protocol", "endpoint", "tls", "auth", "proxy"]),
    "tls": ("table", ["certificate", "key", "sni"]),
    "security": ("table", ["plaintext_auth", "vrfy", "expn", "bare_newline", "sender_login", "dsn"]),
    "domains": ("table", ["local"]),
    "store": ("table", ["maildir_root"]),
    "users": ("table", ["file"]),
    "forward": ("array", ["match", "to", "keep"]),
    "lists": ("map", ["members", "post"]),
    "relay": ("table", ["allowed_networks", "smarthost", "port", "nameservers", "retry_intervals",
                        "max_queue_time", "tls", "transport"]),
    "webhook": ("array", ["name", "match", "url", "secret", "format", "mode", "timeout"]),
    "pipe": ("map", ["command", "timeout"]),
    "limits": ("table", ["max_message_size", "max_recipients", "max_connections_per_ip", "command_timeout",
                         "sender_rate", "data_timeout", "max_bad_commands", "connection_rate"]),
    "plugins": ("table", ["paths", "enable"]),
    "plugin": ("map", ["greeting", "x"]),
}
SCALARS = st.one_of(
    st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.datetimes(), st.dates(), st.times(),
    st.sampled_from(["", " ", "tcp:2525", "tcp:0:interface=127.0.0.1", "smtp", "submission", "pop3", "none",
                     "starttls", "implicit", "required", "5m", "25MB", "1MiB", "-1", "0", "0s", "100/hour", "off",
                     "whsec_!!", "whsec_aGk=", "whsec_é", "http://h/", "http://[::1", "a@example.test",
                     "*@example.test", "webhook:x", "pipe:x", "reject:550 no", "local", "local:a@b.test",
                     "smtp:h:1", "mx", "127.0.0.1:53", "::1", "10.0.0.0/8", "\x00", "é", "unix:/nonexistent"]),
)
KEYS = st.sampled_from(sorted({key for _, keys in SECTIONS.values() for key in keys} | set(SECTIONS))) \
    | st.text(max_size=8)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=12)
LEAVES = weighted((3, SCALARS), (1, VALUES), (1, st.lists(SCALARS, max_size=3)))


def shaped(section: str) -> st.SearchStrategy:
    """A value for a top-level key: mostly of the right shape, with known keys, any leaves."""
    shape, keys = SECTIONS[section]
    table = st.dictionaries(weighted((4, st.sampled_from(keys)), (1, KEYS)), LEAVES, max_size=len(keys) + 1)
    if section == "relay":
        table = table.flatmap(lambda t: st.dictionaries(st.sampled_from(["legacy.test", "x"]) | KEYS, LEAVES,
                                                        max_size=2).map(lambda tr: {**t, "transport": tr}))
    right = {"table": table, "array": st.lists(table, max_size=3),
             "map": st.dictionaries(st.sampled_from(["team@example.test", "x", "a b"]) | KEYS, table, max_size=2)}
    return weighted((5, right[shape]), (1, VALUES))


DOCUMENTS = st.fixed_dictionaries({}, optional={name: shaped(name) for name in SECTIONS}).flatmap(
    lambda document: st.dictionaries(KEYS, VALUES, max_size=1).map(lambda extra: {**extra, **document})
)


def check_config(document: dict) -> None:
    try:
        parse_config(document)
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            assert PROBLEM.fullmatch(problem), f"not `key.path: reason`: {problem!r}"


def paths_in(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_in(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_in(item, (*prefix, index))
    return found


@st.composite
def mutated_default(draw: Any) -> dict:
    """The shipped etc/mailgate.toml with a few keys replaced, removed or added."""
    document = copy.deepcopy(DEFAULT_DOCUMENT)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths_in(document)[1:]))
        *parents, last = path
        container = document
        for step in parents:
            container = container[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            container[last] = draw(VALUES)
        elif action == "remove":
            del container[last]
        elif isinstance(container[last], dict):
            container[last][draw(KEYS)] = draw(VALUES)
        elif isinstance(container[last], list):
            container[last].append(draw(VALUES))
        else:
            container[last] = draw(VALUES)
    return document


def test_default_config_parses() -> None:
    config = parse_config(DEFAULT_DOCUMENT)
    assert math.isfinite(config.limits.command_timeout_seconds)


def test_config_arbitrary_documents() -> None:
    @fuzz(250)
    @given(DOCUMENTS)
    def run(document: dict) -> None:
        check_config(document)

    run()


def test_config_mutated_default() -> None:
    @fuzz(400)
    @given(mutated_default())
    def run(document: dict) -> None:
        check_config(document)

    run()


# --- bugs the fuzzing found -------------------------------------------------------

MINIMAL = {"listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}]}


@pytest.mark.parametrize("name", [["tickets"], {"a": 1}])
def test_config_webhook_name_of_wrong_type(name: Any) -> None:
    document = {**MINIMAL, "webhook": [{"name": name, "match": ["*@h.test"], "url": "http://127.0.0.1/"}]}
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    assert [p for p in raised.value.problems if p.startswith("webhook[0].name: ")], raised.value.problems


@pytest.mark.parametrize("key", ["command_timeout", "data_timeout"])
def test_config_duration_overflowing_to_infinity_is_refused(key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({**MINIMAL, "limits": {key: "9" * 400 + "s"}})
    assert raised.value.problems[0].startswith(f"limits.{key}: ")
