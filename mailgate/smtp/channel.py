"""The contract between the SMTP session and its command handlers: the Channel, the Handler, the Answer.

A handler is a function of the command's argument, the connection's
SessionState, a Channel and the listener's policy. It answers with a
Reply when the answer is ready at once, or with a coroutine (an `async
def` called) when it must wait for plugins, the disk or the client's next
line; the session converts that coroutine to a Deferred once, pauses
reading until it finishes, and sends the Reply it returns. None means the
handler already did all it had to through the Channel (QUIT, STARTTLS).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Protocol

from twisted.internet.defer import Deferred

from mailgate.core.reply import Reply
from mailgate.smtp.data_reader import DataReader
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.state import SessionState


class Channel(Protocol):
    """What a handler may ask of its connection, besides giving its answer."""

    def send(self, reply: Reply) -> None:
        """Send an intermediate reply (AUTH's 334 challenge) before the final one."""

    def read_line(self) -> Awaitable[str]:
        """The client's next line (an AUTH response); the idle timer runs while it is awaited."""

    def close(self, reply: Reply) -> None:
        """Say `reply` and end the connection; nothing more is read or answered."""

    def start_tls(self, ready: Reply) -> None:
        """Drop the input pipelined so far, say `ready` in the clear and begin the TLS handshake."""

    def receive_data(self, reader: DataReader) -> None:
        """Hand the bytes that follow to `reader`, in bulk, until the end of the data."""

    def server_name(self) -> str:
        """The name the server goes by on this connection: the host name the client asked for
        in its TLS handshake when a [tls.sni] pair is served for it, else server.hostname."""


Pending = Coroutine[Deferred[object], object, Reply | None]
Answer = Reply | Pending | None
Handler = Callable[[str, SessionState, Channel, ListenerPolicy], Answer]
