"""What a POP3 command handler may ask of its session, and what the session asks of a handler.

The session owns the connection, the input queue and its order; the
handler of the current state (AUTHORIZATION, TRANSACTION) owns that state's
data. A command that has to wait returns a coroutine: the session runs it
and holds later pipelined commands back until it ends (RFC 2449 PIPELINING).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import IO, TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from mailgate.pop3.maildrop import Maildrop

Wait = Coroutine[Any, Any, None]  # a command still running; its end lets the next one start
Command = Callable[[bytes], "Wait | None"]  # called with the argument, the rest of the line


class Channel(Protocol):
    """The session as a command handler sees it (POP3Session implements this)."""

    @property
    def is_connected(self) -> bool: ...

    @property
    def secure(self) -> bool:
        """Whether the connection is encrypted (implicit TLS, or after STLS)."""

    @property
    def peer_ip(self) -> str: ...

    @property
    def tls_possible(self) -> bool:
        """Whether STLS could start TLS now: configured, supported by the transport, not yet on."""

    def reply(self, line: bytes) -> None:
        """Send one status line (CRLF added)."""

    def write(self, data: bytes) -> None:
        """Send a multi-line response as it is."""

    def close(self) -> None:
        """Drop the connection once what was written is out; later input is ignored."""

    def pause(self, seconds: float) -> Deferred[None]:
        """Fire after `seconds`; cancelled (CancelledError) if the connection is lost first."""

    def read_line(self) -> Deferred[bytes]:
        """The client's next line, not read as a command (a SASL response, RFC 5034 section 4)."""

    def start_tls(self) -> None:
        """Begin TLS now, forgetting any input that came before (RFC 2595 section 4)."""

    def send_message(self, handle: IO[bytes], top_lines: int | None, first_line: bytes) -> Deferred[None]:
        """Stream a message file after `first_line`: whole (RETR) or its first lines (TOP)."""

    def enter_transaction(self, maildrop: Maildrop) -> None:
        """Login done: the TRANSACTION state begins over `maildrop`."""


class StateHandler(Protocol):
    """The commands of one session state and the data they share."""

    def commands(self) -> Mapping[str, Command]:
        """The commands valid in this state, by upper-case name."""

    def capabilities(self) -> list[bytes]:
        """CAPA lines this state adds (RFC 2449): what its commands would accept now."""

    def connection_lost(self) -> None:
        """The connection is gone: release what the state holds."""
