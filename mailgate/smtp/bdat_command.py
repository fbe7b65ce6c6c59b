"""The SMTP BDAT command (RFC 3030 CHUNKING): one counted chunk, and the reply when it is read.

`bdat` checks the command and hands the session a ChunkReader for the
chunk's octets; when they are read the session calls `chunk_done`, which
answers a middle chunk at once and gives the message after `LAST` to
`data_command.finish_message`, as DATA does. A syntactically valid BDAT is
always read to its end, refused or not, so its octets are never taken as
commands: smuggling a command in a chunk is not possible.
"""

from __future__ import annotations

import re

from mailgate.core.reply import Reply
from mailgate.smtp.channel import Answer, Channel
from mailgate.smtp.chunk_reader import ChunkReader
from mailgate.smtp.data_command import NEED_MAIL, NO_RECIPIENTS, TOO_BIG, data_refusal, finish_message
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState

# Without a count the data cannot be told from the commands after it: the connection ends.
BDAT_SYNTAX = Reply(421, "4.5.0", "Syntax: BDAT chunk-size [LAST]; closing connection")
BDAT_ARGUMENT = re.compile(r"(\d{1,18})(?: +(LAST))?", re.IGNORECASE)


def bdat(argument: str, state: SessionState, channel: Channel, policy: ListenerPolicy) -> Answer:
    match = BDAT_ARGUMENT.fullmatch(argument)
    if match is None:
        channel.close(BDAT_SYNTAX)
        return None
    size, last = int(match[1]), match[2] is not None
    reader = _reader(state, policy)
    reader.expect(size, last, _refusal(state, reader, size, policy))
    if size == 0:
        return chunk_done(reader, state, policy)
    channel.receive_data(reader)
    return None


def _reader(state: SessionState, policy: ListenerPolicy) -> ChunkReader:
    """The open transaction's message so far, or a new one; a reader that only discards without one."""
    envelope = state.envelope
    if envelope is None:
        return ChunkReader(max_size=0)
    if state.chunks is not None and state.chunks[0] is envelope:
        return state.chunks[1]
    reader = ChunkReader(max_size=policy.config.limits.max_message_size)
    state.chunks = (envelope, reader)
    return reader


def _refusal(state: SessionState, reader: ChunkReader, size: int, policy: ListenerPolicy) -> Reply | None:
    """Why this chunk is refused before a byte of it is read, if it is."""
    if state.envelope is None:
        return NEED_MAIL
    if not state.envelope.rcpt_to:
        return NO_RECIPIENTS
    if reader.size + reader.lines + size > policy.config.limits.max_message_size:
        state.envelope = state.chunks = None
        return TOO_BIG
    return None


def chunk_done(reader: ChunkReader, state: SessionState, policy: ListenerPolicy) -> Answer:
    """A chunk's reply: its refusal, "received" for a middle chunk, the message's after LAST."""
    if reader.refusal is not None:
        return reader.refusal
    refusal = data_refusal(reader, policy.config.security.bare_newline)
    if not reader.last:
        if refusal is None:
            return Reply(250, "2.0.0", f"{reader.chunk_count} octets received")
        state.envelope = state.chunks = None  # RFC 3030 2: the transaction failed; later chunks are discarded
        return refusal
    envelope = state.envelope
    state.envelope = state.chunks = None
    assert envelope is not None  # a reader without a refusal belongs to the open transaction
    return finish_message(reader, envelope, state.esmtp, policy)
