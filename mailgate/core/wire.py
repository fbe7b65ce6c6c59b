"""The wire form of stored mail: CRLF line ends and dot-stuffing, block by block.

Messages are stored with LF line ends; SMTP and POP3 send CRLF with lines
starting with '.' doubled. Both conversions run per block with bytes.replace,
never per line, and carry the little state a block boundary needs.
"""

from __future__ import annotations

MAX_TEXT_LINE = 1000  # RFC 5321 4.5.3.1.6, CRLF included: DATA, BDAT and what plugins change


class CRLFConverter:
    """Turn a byte stream's line ends into CRLF, one block at a time.

    Files hold LF, but a file from another tool may already hold CRLF, so
    CRLF is kept and a bare LF or bare CR becomes CRLF: no bare line end
    ever leaves mailgate. A CR at the end of a block is held back until the
    next block shows whether an LF follows it.
    """

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, block: bytes) -> bytes:
        data = self._carry + block
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        else:
            self._carry = b""
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        carry, self._carry = self._carry, b""
        return b"\r\n" if carry else b""


class DotStuffer:
    """Byte-stuff lines starting with '.' (RFC 1939 section 3), block by block."""

    def __init__(self) -> None:
        self._line_start = True

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self._line_start and out.startswith(b"."):
            out = b"." + out
        self._line_start = out.endswith(b"\n")
        return out

    def finish(self) -> bytes:
        """The terminating line, after a CRLF if the message lacked a final one."""
        return (b"" if self._line_start else b"\r\n") + b".\r\n"
