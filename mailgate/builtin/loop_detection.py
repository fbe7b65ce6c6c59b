"""Built-in plugin: a message that has passed too many hops is a mail loop (RFC 5321 6.3).

Asked first of all `mailgate_message` plugins (tryfirst), so a looping
message is refused before any other plugin spends work on it. Only the
header section is scanned, never the body.
"""

from __future__ import annotations

from mailgate import hookimpl
from mailgate.core.reply import Reply

MAX_RECEIVED_HEADERS = 50  # more means a mail loop; Postfix's hopcount_limit is 50 too
LOOP = Reply(554, "5.4.6", "Too many Received headers: mail loop detected")


class LoopDetection:
    @hookimpl(tryfirst=True)
    def mailgate_message(self, message: bytes) -> Reply | None:
        return LOOP if received_headers(message) > MAX_RECEIVED_HEADERS else None


def received_headers(message: bytes) -> int:
    """How many Received: fields the header section (up to the first empty line) holds."""
    end = message.find(b"\r\n\r\n")
    head = b"\r\n" + (message if end < 0 else message[: end + 2])
    return head.lower().count(b"\r\nreceived:")
