"""DATA reception in bulk: end of data, dot-unstuffing, bare newlines, size and line limits.

A message arrives in socket-sized blocks. Each block is cut at its last
newline, so every piece handled starts at a line start and ends with one;
the partial line waits for the next block. Each piece is then transformed
with a handful of C-level bytes operations (find, count, replace) into the
on-disk form (LF line ends, dots unstuffed): never a Python call per line,
and only one copy of the message is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.core.wire import MAX_TEXT_LINE

END_OF_DATA = b"\r\n.\r\n"


@dataclass
class DataReader:
    """Collects one message body until CRLF.CRLF and reports what was wrong with it.

    Only CRLF.CRLF ends the data (RFC 5321 4.1.1.4): `\\n.\\n`, `\\r.\\r` and
    mixtures are ordinary text, so a smuggled second message stays inside
    the first. A bare LF is a line end like CRLF (stored as one, and a dot
    after it unstuffed, as smtplib stuffs it); whether a message holding one
    is taken is the session's policy (`security.bare_newline`). A bare CR
    and a NUL are kept as they came and flagged: they are never taken.
    """

    max_size: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # octets stored, LF line ends
    lines: int = 0  # LF count
    too_big: bool = False
    bare_lf: bool = False
    bare_cr: bool = False
    nul_byte: bool = False  # NUL is never text (RFC 5321 2.3.8); "\0." could end data downstream
    line_too_long: bool = False
    _carry: bytes = b""
    _after_crlf: bool = True  # the DATA command line ended with CRLF

    def feed(self, data: bytes) -> bytes | None:
        """Take the next block; return None while data goes on, else what follows it."""
        buffer = self._carry + data if self._carry else data
        if self._after_crlf and buffer.startswith(b".\r\n"):
            return buffer[3:]
        end = buffer.find(END_OF_DATA)
        if end >= 0:
            self._carry = b""
            self._take(buffer[: end + 2])
            return buffer[end + 5 :]
        cut = buffer.rfind(b"\n") + 1
        self._carry = buffer[cut:]
        if len(self._carry) > MAX_TEXT_LINE:
            self.line_too_long = True  # keep scanning for the end, but hold no more of it
            self._carry = self._carry[-4:]
        if cut:
            self._take(buffer[:cut])
        return None

    def _take(self, block: bytes) -> None:
        """Store one run of whole lines, dots unstuffed."""
        self._after_crlf = block.endswith(b"\r\n")
        self._store(block, unstuff=True)

    def _store(self, block: bytes, unstuff: bool = False) -> None:
        """One run of whole lines in the on-disk form (LF line ends), its flags and counts; BDAT's too."""
        newlines = block.count(b"\n")  # the LF count of the stored form too: CRLF and unstuffing keep each LF
        text = block.replace(b"\r\n", b"\n")
        if newlines != len(block) - len(text):  # each CRLF made one octet shorter: fewer CRLFs than LFs
            self.bare_lf = True
        if len(block) > MAX_TEXT_LINE and max(map(len, block.split(b"\n"))) >= MAX_TEXT_LINE:
            self.line_too_long = True
        self.nul_byte = self.nul_byte or b"\0" in text
        self.bare_cr = self.bare_cr or b"\r" in text
        if unstuff:
            text = text[1:] if text.startswith(b".") else text
            text = text.replace(b"\n.", b"\n")
        self.size += len(text)
        self.lines += newlines
        if self.size + self.lines > self.max_size:  # SIZE counts CRLF octets
            self.too_big = True
            self.chunks.clear()  # discard as it comes: an oversize message is never buffered
            return
        self.chunks.append(text)
