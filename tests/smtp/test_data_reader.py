"""Tests for mailgate.smtp.data_reader.DataReader: end of data, unstuffing, bare newlines, limits."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mailgate.smtp.data_reader import DataReader

BIG = 10_000_000


@dataclass
class Result:
    body: bytes
    rest: bytes | None
    size: int
    lines: int
    too_big: bool
    bare_lf: bool
    bare_cr: bool
    line_too_long: bool


def read(pieces: list[bytes], max_size: int = BIG) -> Result:
    """Feed `pieces` in order until the reader reports the end; later pieces must not be needed."""
    reader = DataReader(max_size=max_size)
    rest = None
    for index, piece in enumerate(pieces):
        rest = reader.feed(piece)
        if rest is not None:
            rest += b"".join(pieces[index + 1 :])
            break
    return Result(
        b"".join(reader.chunks), rest, reader.size, reader.lines,
        reader.too_big, reader.bare_lf, reader.bare_cr, reader.line_too_long,
    )


def every_split(data: bytes) -> list[list[bytes]]:
    """One piece, two pieces at every boundary, and one byte at a time."""
    splits = [[data], [bytes([b]) for b in data]]
    splits += [[data[:i], data[i:]] for i in range(1, len(data))]
    return splits


def assert_split_invariant(data: bytes, **options: object) -> Result:
    whole = read([data], **options)
    for pieces in every_split(data):
        assert read(pieces, **options) == whole, pieces
    return whole


MESSAGE = (
    b"Subject: hi\r\n\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b"..\r\n"
    b"plain\r\n"
    b".\r\n"
    b"MAIL FROM:<next@example.test>\r\n"
)


def test_end_marker_and_leftover() -> None:
    result = read([MESSAGE])
    assert result.body == b"Subject: hi\n\nleading dot\n.two dots\n.\nplain\n"
    assert result.rest == b"MAIL FROM:<next@example.test>\r\n"
    assert not (result.too_big or result.bare_lf or result.bare_cr or result.line_too_long)


def test_split_at_every_byte_boundary_gives_the_same_result() -> None:
    result = assert_split_invariant(MESSAGE)
    assert result.rest == b"MAIL FROM:<next@example.test>\r\n"


def test_dot_unstuffing_of_first_line_and_lone_dot_lines() -> None:
    """RFC 5321 4.5.2: one leading dot removed from every line, the first one included."""
    result = read([b"..\r\n.x\r\n...y\r\nz.\r\n.\r\n"])
    assert result.body == b".\nx\n..y\nz.\n"


def test_empty_message() -> None:
    result = read([b".\r\nQUIT\r\n"])
    assert result == Result(b"", b"QUIT\r\n", 0, 0, False, False, False, False)


def test_empty_message_split() -> None:
    assert read([b".", b"\r", b"\n"]) == Result(b"", b"", 0, 0, False, False, False, False)


def test_no_end_yet_returns_none() -> None:
    reader = DataReader(max_size=BIG)
    assert reader.feed(b"line one\r\nline two\r\n") is None
    assert reader.feed(b".\r") is None
    assert reader.feed(b"\n") == b""
    assert b"".join(reader.chunks) == b"line one\nline two\n"


def test_empty_line_before_end() -> None:
    result = read([b"a\r\n", b"\r\n.\r\n"])
    assert result.body == b"a\n\n"
    assert result.rest == b""


@pytest.mark.parametrize("smuggle", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n", b"\r.\r"])
def test_smuggling_sequences_do_not_end_data(smuggle: bytes) -> None:
    """Only CRLF.CRLF ends DATA; the smuggled commands stay inside the message."""
    data = (
        b"Subject: first\r\n\r\nbody" + smuggle
        + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nevil\r\n.\r\n"
    )
    result = assert_split_invariant(data)
    assert result.rest == b""
    assert result.bare_lf or result.bare_cr
    assert b"MAIL FROM:<evil@x.test>" in result.body
    assert b"evil\n" in result.body


@pytest.mark.parametrize("smuggle", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"])
def test_smuggling_sequence_without_any_later_end_keeps_waiting(smuggle: bytes) -> None:
    reader = DataReader(max_size=BIG)
    assert reader.feed(b"body" + smuggle + b"MAIL FROM:<evil@x.test>\r\n") is None


def test_clean_message_has_no_bare_newline() -> None:
    result = read([b"a\r\nb\r\n.\r\n"])
    assert not (result.bare_lf or result.bare_cr)


@pytest.mark.parametrize("bare", [b"a\nb\r\n", b"a\n"])
def test_bare_lf_flagged(bare: bytes) -> None:
    result = read([bare + b"\r\n.\r\n"])
    assert result.bare_lf and not result.bare_cr


@pytest.mark.parametrize("bare", [b"a\rb\r\n", b"a\r\r\n"])
def test_bare_cr_flagged(bare: bytes) -> None:
    result = read([bare + b"\r\n.\r\n"])
    assert result.bare_cr and not result.bare_lf


def test_bare_lf_is_a_line_end_and_a_dot_after_it_is_unstuffed() -> None:
    """As smtplib sends bytes with LF line ends: it stuffs a dot that starts an LF-ended line."""
    result = assert_split_invariant(b"a\n..b\nc\r\n.\r\nX")
    assert result.body == b"a\n.b\nc\n"
    assert (result.lines, result.size, result.rest) == (3, 7, b"X")


def test_bare_cr_is_kept_as_is() -> None:
    result = read([b"a\rb\r\n.\r\n"])
    assert result.body == b"a\rb\n"


def test_size_and_lines_count_the_lf_form() -> None:
    result = read([b"ab\r\n..c\r\n\r\n.\r\n"])
    assert result.body == b"ab\n.c\n\n"
    assert result.size == len(result.body) == 7
    assert result.lines == 3


def test_too_big_discards_chunks_and_still_finds_the_end() -> None:
    line = b"x" * 98 + b"\r\n"  # 100 octets as sent
    data = line * 50 + b".\r\nQUIT\r\n"
    result = assert_split_invariant(data, max_size=1000)
    assert result.too_big
    assert result.body == b""
    assert result.rest == b"QUIT\r\n"


def test_exactly_max_size_is_not_too_big() -> None:
    """SIZE counts the message as sent, with CRLF line ends."""
    line = b"x" * 98 + b"\r\n"
    result = read([line * 10 + b".\r\n"], max_size=1000)
    assert not result.too_big
    assert result.size + result.lines == 1000
    assert result.body == (b"x" * 98 + b"\n") * 10
    assert read([line * 10 + b".\r\n"], max_size=999).too_big


def test_line_of_998_characters_is_fine() -> None:
    result = assert_split_invariant(b"y" * 998 + b"\r\n.\r\n")
    assert not result.line_too_long
    assert result.body == b"y" * 998 + b"\n"


def test_line_of_999_characters_is_too_long() -> None:
    result = assert_split_invariant(b"a\r\n" + b"y" * 999 + b"\r\nb\r\n.\r\nREST")
    assert result.line_too_long
    assert result.rest == b"REST"


def test_very_long_line_is_not_buffered_and_end_is_still_found() -> None:
    reader = DataReader(max_size=BIG)
    for _ in range(100):
        assert reader.feed(b"z" * 1000) is None
    assert len(reader._carry) <= 1000  # bounded, however long the line goes on
    assert reader.feed(b"\r\n.\r\nNOOP\r\n") == b"NOOP\r\n"
    assert reader.line_too_long


def test_long_line_in_the_last_block() -> None:
    result = read([b"y" * 2000 + b"\r\n.\r\n"])
    assert result.line_too_long
    assert result.rest == b""


def test_nul_bytes_are_flagged_and_kept() -> None:
    """Kept, so "\\0." is not a dot line: never the end of data, whatever follows."""
    reader = DataReader(10**6)
    assert reader.feed(b"a\r\n\x00.\r\nb\r\n.\r\n") == b""
    assert reader.nul_byte and b"".join(reader.chunks) == b"a\n\x00.\nb\n"
