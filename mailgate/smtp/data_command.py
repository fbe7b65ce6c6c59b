"""The SMTP DATA command: one message, from the 354 to the final reply.

The session feeds the body to `mailgate.smtp.data_reader.DataReader` in bulk; this
mixin starts the reader and the DATA timers, refuses what the reader found
wrong, and hands a good message, with its Received: header, to the deliverer.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from twisted.logger import Logger

from mailgate.core.session import Envelope
from mailgate.core.errors import DeliveryError
from mailgate.store.maildir_writer import StoredMessage
from mailgate.smtp.data_reader import DataReader
from mailgate.core.trace import trace_header

log = Logger()

DATA_PROGRESS_BYTES = 1024  # DATA must advance this much per command_timeout
MAX_RECEIVED_HEADERS = 50  # more means a mail loop (RFC 5321 6.3); Postfix uses 50 too
_ids = itertools.count(1)
_pid = f"{os.getpid():X}"  # not a system call per message; twistd forks after import


def _forked() -> None:
    global _pid
    _pid = f"{os.getpid():X}"


os.register_at_fork(after_in_child=_forked)


def transaction_id() -> str:
    """A short id for logs and the "queued as" reply, unique within a host."""
    return f"{time.time_ns() // 1000:X}{_pid}{next(_ids):X}"


class SMTPDataCommand:
    """The DATA command, mixed into the SMTP session."""

    def smtp_DATA(self: Any, argument: str) -> None:
        if argument:
            return self._send(501, "5.5.4 Syntax: DATA")
        if self._envelope is None:
            return self._send(503, "5.5.1 Need MAIL command")
        if not self._envelope.rcpt_to:
            return self._send(554, "5.5.1 No valid recipients")
        self._reader = DataReader(
            max_size=self.factory.config.limits.max_message_size,
            normalize_bare_newlines=self.factory.config.security.bare_newline == "normalize",
        )
        self._data_progress = 0
        self._data_deadline = self.factory.clock.callLater(
            self.factory.config.limits.data_timeout_seconds, self.timeoutConnection
        )
        self._send(354, "End data with <CR><LF>.<CR><LF>")

    def _note_data_progress(self: Any, size: int) -> None:
        """In DATA the idle timer restarts only per KiB received: a client
        trickling a byte at a time cannot keep the session alive."""
        self._data_progress += size
        if self._data_progress >= DATA_PROGRESS_BYTES:
            self._data_progress = 0
            self.resetTimeout()

    def _cancel_data_deadline(self: Any) -> None:
        if self._data_deadline is not None and self._data_deadline.active():
            self._data_deadline.cancel()
        self._data_deadline = None

    def _end_data(self: Any, rest: bytes) -> None:
        self._cancel_data_deadline()
        reader, envelope = self._reader, self._envelope
        self._reader, self._envelope = None, None
        self._buffer = rest + self._buffer
        assert reader is not None and envelope is not None
        self._wait_for(self._finish_message(reader, envelope))

    async def _finish_message(self: Any, reader: DataReader, envelope: Envelope) -> Any:
        refusal = data_refusal(reader, self.factory.config.security.bare_newline)
        if refusal is not None:
            return self._reply(*refusal)
        queue_id = transaction_id()
        header = self._trace_header(envelope, queue_id)
        message = StoredMessage.build(header, reader.chunks, reader.size, reader.lines)
        try:
            await self.factory.deliverer.deliver(envelope, message, queue_id)
        except DeliveryError as exc:
            log.warn("{id}: delivery failed: {reason}", id=queue_id, reason=exc.reason)
            return exc.reply
        log.info(
            "{id}: from=<{sender}> to={rcpts} size={size} delivered",
            id=queue_id, sender=envelope.mail_from, rcpts=len(envelope.rcpt_to), size=message.size,
        )
        return self._reply(250, f"2.0.0 Ok: queued as {queue_id}")

    def _trace_header(self: Any, envelope: Envelope, queue_id: str) -> bytes:
        protocol = "ESMTP" if self._esmtp else "SMTP"
        protocol += "S" if self._secure() else ""
        protocol += "A" if self._authenticated_as else ""
        return trace_header(
            mail_from=envelope.mail_from, hostname=self.factory.config.server.hostname,
            queue_id=queue_id, protocol=protocol, recipients=envelope.rcpt_to,
            helo=self._helo, client_ip=self._client_ip,
        )


def data_refusal(reader: DataReader, bare_newline_policy: str) -> tuple[int, str] | None:
    """The reply (code, text) refusing a received message, or None to deliver it."""
    if reader.too_big:
        return 552, "5.3.4 Message size exceeds fixed limit"
    if reader.line_too_long:
        return 500, "5.5.2 Line too long"
    if reader.bare_newline and bare_newline_policy == "reject":
        return 550, "5.5.2 Message contains bare CR or LF characters"
    if reader.nul_byte and bare_newline_policy == "reject":
        return 550, "5.5.2 Message contains NUL characters"
    if reader.received_headers() > MAX_RECEIVED_HEADERS:
        return 554, "5.4.6 Too many Received headers: mail loop detected"
    return None
