"""CHUNKING (RFC 3030) in memory: counted chunks, pipelining, the DATA line-ending rules, refusals that still consume."""

from __future__ import annotations

from typing import Callable

import pytest

from mailgate.smtp.chunk_reader import ChunkReader
from tests.support.smtp_session import ALICE, Client, Server

MAIL = b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
MESSAGE = b"Subject: chunks\r\n\r\nline one\r\n.line with a dot\r\n..\r\nlast\r\n"


def bdat(chunk: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def delivered_body(server: Server) -> bytes:
    """The message as the deliverer got it, from its own first header on (the trace headers cut)."""
    [(_, message)] = server.deliverer.calls
    return message[message.index(b"Subject: chunks"):]


def test_chunking_is_advertised(server: Server) -> None:
    [ehlo] = server.connect().send(b"EHLO c\r\n")
    assert "\n250-CHUNKING" in ehlo or ehlo.endswith("250 CHUNKING")


def test_several_chunks_in_one_pipelined_write_are_stored_exactly(client: Client, server: Server) -> None:
    cuts = [MESSAGE[:7], MESSAGE[7:18], MESSAGE[18:19], MESSAGE[19:]]  # a CRLF split across chunks too
    stream = MAIL + b"".join(bdat(c) for c in cuts[:-1]) + bdat(cuts[-1], last=True)
    replies = client.send(stream)
    assert [r[:3] for r in replies] == ["250", "250", "250", "250", "250", "250"], replies
    assert replies[2] == "250 2.0.0 7 octets received"
    assert replies[-1].startswith("250 2.0.0 Ok: queued as")
    assert delivered_body(server) == MESSAGE.replace(b"\r\n", b"\n")  # no dot-unstuffing


def test_chunks_in_single_bytes(client: Client, server: Server) -> None:
    stream = MAIL + bdat(MESSAGE[:30]) + bdat(MESSAGE[30:], last=True) + b"QUIT\r\n"
    client.transport.clear()
    for byte in range(len(stream)):
        client.protocol.dataReceived(stream[byte:byte + 1])
    assert delivered_body(server) == MESSAGE.replace(b"\r\n", b"\n")
    assert client.transport.value().endswith(b"221 2.0.0 Bye\r\n")


def test_bdat_zero_last_ends_the_message(client: Client, server: Server) -> None:
    replies = client.send(MAIL + bdat(MESSAGE) + b"BDAT 0 LAST\r\n")
    assert replies[-1].startswith("250 2.0.0 Ok: queued as")
    assert delivered_body(server) == MESSAGE.replace(b"\r\n", b"\n")


def test_a_last_line_without_crlf_is_stored_with_one(client: Client, server: Server) -> None:
    client.send(MAIL + bdat(MESSAGE + b"no end", last=True))
    assert delivered_body(server) == MESSAGE.replace(b"\r\n", b"\n") + b"no end\n"


def test_commands_inside_a_chunk_are_data(client: Client, server: Server) -> None:
    smuggled = b"Subject: chunks\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
    replies = client.send(MAIL + bdat(smuggled, last=True) + b"NOOP\r\n")
    assert [r[:3] for r in replies] == ["250", "250", "250", "250"], replies
    [(envelope, _)] = server.deliverer.calls
    assert envelope.mail_from == "sender@remote.test"


@pytest.mark.parametrize("command", [b"BDAT 6", b"BDAT 6 LAST"])
def test_chunk_without_transaction_is_consumed_and_refused(client: Client, command: bytes) -> None:
    replies = client.send(command + b"\r\nRSET\r\nNOOP\r\n")  # "RSET\r\n" is the chunk, not a command
    assert replies == ["503 5.5.1 Need MAIL command", "250 2.0.0 Ok"]


def test_chunk_without_recipients_is_consumed_and_refused(client: Client) -> None:
    replies = client.send(b"MAIL FROM:<s@remote.test>\r\nBDAT 6 LAST\r\nRSET\r\nNOOP\r\n")
    assert [r[:3] for r in replies] == ["250", "554", "250"], replies


def test_data_after_bdat_is_refused(client: Client) -> None:
    replies = client.send(MAIL + bdat(b"Subject: x\r\n") + b"DATA\r\n")
    assert replies[-1] == "503 5.5.1 DATA not allowed after BDAT"


def test_rset_discards_the_chunks(client: Client, server: Server) -> None:
    client.send(MAIL + bdat(b"Subject: old\r\n") + b"RSET\r\n")
    client.send(MAIL + bdat(MESSAGE, last=True))
    assert delivered_body(server) == MESSAGE.replace(b"\r\n", b"\n")
    assert b"Subject: old" not in server.deliverer.calls[0][1]


def test_bad_size_closes_the_connection(client: Client) -> None:
    replies = client.send(b"BDAT x\r\n")
    assert replies == ["421 4.5.0 Syntax: BDAT chunk-size [LAST]; closing connection"]
    assert client.transport.disconnecting


def test_a_chunk_over_the_size_limit_fails_the_transaction(make_server: Callable[..., Server]) -> None:
    server = make_server(limits={"max_message_size": 100})
    client = server.connect()
    client.send(b"EHLO c\r\n")
    replies = client.send(MAIL + bdat(b"a" * 60 + b"\r\n") + bdat(b"b" * 60 + b"\r\n") + bdat(b"c\r\n", last=True))
    assert [r[:3] for r in replies] == ["250", "250", "250", "552", "503"], replies
    assert replies[3].startswith("552 5.3.4")
    assert server.deliverer.calls == []


@pytest.mark.parametrize("policy, code", [("normalize", "250"), ("reject", "550")])
def test_bare_lf_follows_the_data_policy(make_server: Callable[..., Server], policy: str, code: str) -> None:
    server = make_server(security={"bare_newline": policy})
    client = server.connect()
    client.send(b"EHLO c\r\n")
    replies = client.send(MAIL + bdat(b"Subject: x\r\n\r\nbare\nlf\r\n", last=True))
    assert replies[-1][:3] == code, replies
    if code == "250":
        assert server.deliverer.calls[0][1].endswith(b"\nbare\nlf\n")


@pytest.mark.parametrize("body", [b"Subject: x\r\n\r\nbare\rcr\r\n", b"Subject: x\r\n\r\nnul\0\r\n",
                                  b"Subject: x\r\n\r\nends in cr\r"])
def test_bare_cr_and_nul_are_refused(client: Client, server: Server, body: bytes) -> None:
    replies = client.send(MAIL + bdat(body, last=True))
    assert replies[-1][:9] == "550 5.5.2", replies
    assert server.deliverer.calls == []


def test_a_bare_cr_in_a_middle_chunk_fails_it(client: Client, server: Server) -> None:
    replies = client.send(MAIL + bdat(b"Subject: x\r\n\rx\r\n") + bdat(b"more\r\n", last=True))
    assert [r[:3] for r in replies] == ["250", "250", "550", "503"], replies


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    reader = ChunkReader(max_size=1000)
    for piece, last in ((b"a\r", False), (b"\nb\r\n", True)):
        reader.expect(len(piece), last)
        assert reader.feed(piece + b"NEXT") == b"NEXT"
    assert b"".join(reader.chunks) == b"a\nb\n" and not reader.bare_cr and not reader.bare_lf


def test_recipient_of_bdat_message(client: Client, server: Server) -> None:
    client.send(MAIL + bdat(MESSAGE, last=True))
    [(envelope, _)] = server.deliverer.calls
    assert envelope.rcpt_to == [ALICE]
