"""POP3 TRANSACTION state (RFC 1939 section 5): STAT, LIST, UIDL, RETR, TOP, DELE, NOOP, RSET."""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgate.store.maildir_reader import MessageInfo
from mailgate.pop3.streaming import ConnectionAbortedDuringSend, MessageSender

log = Logger()


def message_number(arg: bytes) -> int | None:
    """A 1-based message number argument, or None when it isn't one."""
    text = arg.strip()
    if not text.isdigit() or len(text) > 9:
        return None
    return int(text)


class POP3TransactionCommands:
    """The TRANSACTION commands, mixed into the POP3 session; deletions wait for UPDATE."""

    def _message(self: Any, arg: bytes) -> int | None:
        """Index of a live message for arg, or None after replying -ERR."""
        number = message_number(arg)
        if number is None:
            self._reply(b"-ERR Invalid message number.")
            return None
        if not 1 <= number <= len(self._messages):
            self._reply(b"-ERR There's no message %d." % number)
            return None
        if number - 1 in self._deleted:
            self._reply(b"-ERR Message is deleted.")
            return None
        return number - 1

    def _live(self: Any) -> list[tuple[int, MessageInfo]]:
        return [(i, m) for i, m in enumerate(self._messages) if i not in self._deleted]

    def do_STAT(self: Any, arg: bytes) -> None:
        live = self._live()
        self._reply(b"+OK %d %d" % (len(live), sum(m.size for _, m in live)))

    def do_LIST(self: Any, arg: bytes) -> None:
        self._scan_listing(arg, lambda m: b"%d" % m.size)

    def do_UIDL(self: Any, arg: bytes) -> None:
        self._scan_listing(arg, lambda m: m.uid.encode("ascii"))

    def _scan_listing(self: Any, arg: bytes, value: Callable[[MessageInfo], bytes]) -> None:
        if arg.strip():
            index = self._message(arg)
            if index is not None:
                self._reply(b"+OK %d %s" % (index + 1, value(self._messages[index])))
            return
        live = self._live()
        lines = [b"+OK %d messages:" % len(live)]
        lines += [b"%d %s" % (i + 1, value(m)) for i, m in live]
        self.transport.write(b"\r\n".join(lines) + b"\r\n.\r\n")

    def do_RETR(self: Any, arg: bytes) -> None:
        index = self._message(arg)
        if index is not None:
            self._send(index, None, b"+OK %d octets" % self._messages[index].size)

    def do_TOP(self: Any, arg: bytes) -> None:
        number, _, lines = arg.strip().partition(b" ")
        count = message_number(lines)
        if count is None:
            self._reply(b"-ERR Invalid arguments: TOP msg lines.")
            return
        index = self._message(number)
        if index is not None:
            self._send(index, count, b"+OK")

    def _send(self: Any, index: int, top_lines: int | None, first_line: bytes) -> None:
        try:
            handle = open(self._messages[index].path(self._directory), "rb")
        except OSError as error:
            log.warn("POP3 cannot open message: {error}", error=error)
            self._reply(b"-ERR [SYS/TEMP] Message is not available.")
            return
        self._start_wait()
        self._sender = MessageSender(handle, top_lines, self._reset_idle)
        d = self._sender.begin(self.transport, first_line + b"\r\n")
        d.addCallbacks(self._sent, self._send_failed, callbackArgs=(index, top_lines is None))

    def _sent(self: Any, _: None, index: int, retrieved: bool) -> None:
        self._sender = None
        if retrieved:
            self._retrieved.add(index)  # moved to cur/ at QUIT
        self._done()

    def _send_failed(self: Any, failure: Failure) -> None:
        self._sender = None
        if not failure.check(ConnectionAbortedDuringSend):
            log.failure("POP3 reading a message failed", failure)
        # The "+OK" is out and a "-ERR" would read as message text: only
        # closing tells the client this copy is incomplete.
        if self._connected:
            self.transport.loseConnection()

    def do_DELE(self: Any, arg: bytes) -> None:
        index = self._message(arg)
        if index is not None:
            self._deleted.add(index)
            self._reply(b"+OK Marked to be deleted.")

    def do_NOOP(self: Any, arg: bytes) -> None:
        self._reply(b"+OK")

    def do_RSET(self: Any, arg: bytes) -> None:
        self._deleted.clear()
        self._reply(b"+OK %d messages." % len(self._messages))
