"""POP3 TRANSACTION state (RFC 1939 section 5): STAT, LIST, UIDL, RETR, TOP, DELE, NOOP, RSET, and QUIT's UPDATE."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.logger import Logger

from mailgate.pop3.channel import Channel, Command, Wait
from mailgate.pop3.maildrop import Maildrop
from mailgate.pop3.streaming import ConnectionAbortedDuringSend
from mailgate.store.maildir_reader import MessageInfo

log = Logger()

NOT_REMOVED = b"-ERR [SYS/TEMP] Some deleted messages were not removed."


def message_number(arg: bytes) -> int | None:
    """A 1-based message number argument, or None when it isn't one."""
    text = arg.strip()
    if not text.isdigit() or len(text) > 9:
        return None
    return int(text)


class Transaction:
    """The TRANSACTION commands over one maildrop; deletions wait for UPDATE."""

    def __init__(self, channel: Channel, maildrop: Maildrop) -> None:
        self._channel = channel
        self._maildrop = maildrop
        self._committing = False

    def commands(self) -> Mapping[str, Command]:
        return {
            "STAT": self.do_STAT, "LIST": self.do_LIST, "UIDL": self.do_UIDL,
            "RETR": self.do_RETR, "TOP": self.do_TOP, "DELE": self.do_DELE,
            "NOOP": self.do_NOOP, "RSET": self.do_RSET, "QUIT": self.do_QUIT,
        }  # fmt: skip

    def capabilities(self) -> list[bytes]:
        return []

    def connection_lost(self) -> None:
        if not self._committing:
            self._maildrop.release()  # no UPDATE state: nothing deleted
        # else UPDATE goes on and releases the lock when the commit is done

    def _message(self, arg: bytes) -> int | None:
        """Index of a live message for arg, or None after replying -ERR."""
        number = message_number(arg)
        if number is None:
            self._channel.reply(b"-ERR Invalid message number.")
            return None
        if not 1 <= number <= len(self._maildrop.messages):
            self._channel.reply(b"-ERR There's no message %d." % number)
            return None
        if self._maildrop.is_deleted(number - 1):
            self._channel.reply(b"-ERR Message is deleted.")
            return None
        return number - 1

    def do_STAT(self, arg: bytes) -> None:
        live = self._maildrop.live()
        self._channel.reply(b"+OK %d %d" % (len(live), sum(m.size for _, m in live)))

    def do_LIST(self, arg: bytes) -> None:
        self._scan_listing(arg, lambda m: b"%d" % m.size)

    def do_UIDL(self, arg: bytes) -> None:
        self._scan_listing(arg, lambda m: m.uid.encode("ascii"))

    def _scan_listing(self, arg: bytes, value: Callable[[MessageInfo], bytes]) -> None:
        if arg.strip():
            index = self._message(arg)
            if index is not None:
                self._channel.reply(b"+OK %d %s" % (index + 1, value(self._maildrop.messages[index])))
            return
        live = self._maildrop.live()
        lines = [b"+OK %d messages:" % len(live)]
        lines += [b"%d %s" % (i + 1, value(m)) for i, m in live]
        self._channel.write(b"\r\n".join(lines) + b"\r\n.\r\n")

    def do_RETR(self, arg: bytes) -> Wait | None:
        index = self._message(arg)
        if index is None:
            return None
        return self._send(index, None, b"+OK %d octets" % self._maildrop.messages[index].size)

    def do_TOP(self, arg: bytes) -> Wait | None:
        number, _, lines = arg.strip().partition(b" ")
        count = message_number(lines)
        if count is None:
            self._channel.reply(b"-ERR Invalid arguments: TOP msg lines.")
            return None
        index = self._message(number)
        if index is None:
            return None
        return self._send(index, count, b"+OK")

    async def _send(self, index: int, top_lines: int | None, first_line: bytes) -> None:
        try:
            handle = open(self._maildrop.path(index), "rb")
        except OSError as error:
            log.warn("POP3 cannot open message: {error}", error=error)
            self._channel.reply(b"-ERR [SYS/TEMP] Message is not available.")
            return
        try:
            await self._channel.send_message(handle, top_lines, first_line + b"\r\n")
        except Exception as error:
            if not isinstance(error, ConnectionAbortedDuringSend):
                log.failure("POP3 reading a message failed")
            # The "+OK" is out and a "-ERR" would read as message text: only
            # closing tells the client this copy is incomplete.
            self._channel.close()
            return
        if top_lines is None:
            self._maildrop.mark_retrieved(index)

    def do_DELE(self, arg: bytes) -> None:
        index = self._message(arg)
        if index is not None:
            self._maildrop.mark_deleted(index)
            self._channel.reply(b"+OK Marked to be deleted.")

    def do_NOOP(self, arg: bytes) -> None:
        self._channel.reply(b"+OK")

    def do_RSET(self, arg: bytes) -> None:
        self._maildrop.undelete_all()
        self._channel.reply(b"+OK %d messages." % len(self._maildrop.messages))

    def do_QUIT(self, arg: bytes) -> Wait:
        return self._update()

    async def _update(self) -> None:
        """The UPDATE state (RFC 1939 section 6): commit the marks, then log out, whatever happened."""
        self._committing = True
        marked = self._maildrop.marked_deleted
        try:
            undeleted = await self._maildrop.commit()
        except Exception:
            log.failure("POP3 commit for {address} failed", address=self._maildrop.address)
            self._channel.reply(NOT_REMOVED)
        else:
            if undeleted:
                log.warn(
                    "POP3 could not delete {count} messages of {address}",
                    count=len(undeleted),
                    address=self._maildrop.address,
                )
            if marked:
                log.info("pop3: deleted {count} message(s): user=<{user}> from [{client}]", event="pop3.delete",
                         count=marked - len(undeleted), user=self._maildrop.address, client=self._channel.peer_ip)
            self._channel.reply(NOT_REMOVED if undeleted else b"+OK Logging out.")
        finally:
            self._maildrop.release()
            self._committing = False
        self._channel.close()
