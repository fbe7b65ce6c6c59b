"""The log line of every refused SMTP command: which command, the client's IP, the reply sent.

One line per 4xx or 5xx reply, shaped like Postfix's `NOQUEUE: reject:`
lines so that fail2ban (docs/operations.md has a filter) and an operator's
grep find the client by one pattern:

    reject: RCPT from [192.0.2.7]: 554 5.7.1 Relay access denied; from=<a@example.net> to=<b@elsewhere.test> helo=<pc> listener=mx

A refused AUTH (535) is logged by mailgate.smtp.auth_command instead, with
the account tried; nothing is logged twice.
"""

from __future__ import annotations

import re

from twisted.logger import Logger

from mailgate.core.reply import Reply
from mailgate.smtp.auth_command import printable
from mailgate.smtp.state import SessionState

log = Logger()

_PATH = re.compile(r"<([^>]{0,256})>")
MAX_ARGUMENT_CHARS = 100


def tell(command: str, argument: str, state: SessionState, reply: Reply) -> None:
    """One `smtp.reject` line for `reply`, the answer to `command` (or CONNECT, DATA, TIMEOUT)."""
    if command == "AUTH" and reply.code == 535:
        return  # auth_command's line names the account
    session, envelope = state.session, state.envelope
    fields: dict[str, object] = {
        "event": "smtp.reject", "command": command, "client": session.peer, "reply": str(reply),
        "helo": session.helo, "listener": session.listener,
    }
    details = []
    if envelope is not None:
        fields["from"] = envelope.mail_from
        details.append("from=<{from}>")
    path = _PATH.search(argument) if command in ("MAIL", "RCPT", "VRFY", "EXPN") else None
    if path is not None:
        fields["to" if command != "MAIL" else "from"] = printable(path[1])
        if command != "MAIL":
            details.append("to=<{to}>")
        elif envelope is None:
            details.append("from=<{from}>")
    elif argument and command not in ("AUTH", "DATA", "CONNECT"):
        fields["argument"] = printable(argument[:MAX_ARGUMENT_CHARS])
        details.append("argument={argument!r}")
    if session.user:
        fields["user"] = session.user
        details.append("user=<{user}>")
    details += ["helo=<{helo}>", "listener={listener}"]
    log.info("reject: {command} from [{client}]: {reply}; " + " ".join(details), **fields)
