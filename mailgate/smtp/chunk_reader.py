"""BDAT reception (RFC 3030) in bulk: counted chunks, the same line-ending rules as DATA.

A BDAT chunk is exactly its announced number of octets: nothing in it ends
it, so there is no dot-stuffing and no end-of-data sequence to smuggle a
second message with. The octets of all chunks of one message form one
text; each chunk is cut at its last newline and the partial line carried
to the next, so a CRLF split between two chunks is still one line end.
The pieces are turned into the on-disk form (LF line ends) with the same
few C-level bytes operations as DATA, never a Python call per line, and
the same flags are set, so `data_command.data_refusal` judges both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.core.reply import Reply
from mailgate.core.wire import MAX_TEXT_LINE
from mailgate.smtp.data_reader import DataReader


@dataclass
class ChunkReader(DataReader):
    """The chunks of one BDAT message, and the count of octets the current chunk still owes.

    `feed` takes what the client sends after a BDAT command and returns
    None while the chunk lasts, else the input that follows it (commands
    again). `refusal`, when set, is the answer to this chunk whatever it
    holds: its octets are read and dropped, so they are never taken as
    commands (RFC 3030 2: a refused BDAT's data is still consumed).
    """

    remaining: int = 0
    last: bool = False  # the current chunk ends the message
    refusal: Reply | None = None
    chunk_count: int = 0  # octets of the current chunk, for its reply

    def expect(self, size: int, last: bool, refusal: Reply | None = None) -> None:
        """Begin the next chunk of `size` octets."""
        self.remaining = self.chunk_count = size
        self.last, self.refusal = last, refusal

    def feed(self, data: bytes) -> bytes | None:
        if self.remaining > len(data):
            self.remaining -= len(data)
            self._text(data)
            return None
        piece, rest = data[: self.remaining], data[self.remaining :]
        self.remaining = 0
        self._text(piece)
        if self.last and self.refusal is None:
            self._flush_carry()
        return rest

    def _text(self, data: bytes) -> None:
        """Store the whole lines of `data` after what the earlier chunk left; keep the partial line."""
        if self.refusal is not None or not data:
            return
        buffer = self._carry + data if self._carry else data
        cut = buffer.rfind(b"\n") + 1
        self._carry = buffer[cut:]
        if len(self._carry) > MAX_TEXT_LINE:
            self.line_too_long = True  # the message is refused; hold no more of the line
            self._carry = self._carry[-1:]
        if cut:
            self._store(buffer[:cut])

    def _flush_carry(self) -> None:
        """The message's last line, which need not end with CRLF in BDAT: stored with one."""
        if not self._carry:
            return
        line, self._carry = self._carry, b""
        self._store(line + b"\r\n")  # a CR left at its end stays a bare CR, and is refused
