"""An SMTP conversation with the server's own session code, in memory: every hook, as a client meets it.

    from mailgate.testing import converse

    def test_blocked_domain_is_refused_at_mail_from() -> None:
        smtp = converse([my_plugin], {"domains": {"local": ["example.test"]}})
        assert smtp.send("EHLO client.test")[0].startswith("250")
        assert smtp.send("MAIL FROM:<x@blocked.test>") == ["550 5.7.1 blocked"]

The connection is a StringTransport and time a task.Clock (`advance()`
moves it); what the server would have stored or queued is kept in memory
(`stored`, `queued`), and every `mailgate_event` is collected (`events`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailgate import hookimpl
from mailgate.builtin import load_plugins
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.inbound.transaction import Deliverer
from mailgate.smtp.factory import SMTPFactory
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.session import SMTPSession
from mailgate.testing.memory import MemoryStore
from mailgate.testing.routing import ConfigLike, as_config


class _Events:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def mailgate_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class Conversation:
    """One client connection to a server built from plugins and configuration."""

    def __init__(self, plugins: Iterable[object], config: ConfigLike, client_ip: str, user: str | None) -> None:
        self.config = as_config(config)
        self.clock = Clock()
        self._events = _Events()
        hooks = Hooks(load_plugins(self.config, extra=[self._events, *plugins]), self.clock, propagate_errors=True)
        hooks.manager.hook.mailgate_configure(config=self.config, reactor=self.clock)
        self.memory = MemoryStore()
        deliverer = Deliverer(self.memory, self.memory, hooks, self.config.server.hostname)
        policy = ListenerPolicy(self.config, self.config.listen[0], hooks, deliverer, self.clock)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", client_ip, 40000))
        self.session: SMTPSession = SMTPFactory(policy).buildProtocol(None)
        self.session.makeConnection(self.transport)
        if user is not None:  # as after a successful AUTH
            self.session.state.session = replace(self.session.state.session, user=user)
        self.greeting = self._replies()

    def send(self, line: str | bytes) -> list[str]:
        """Send one command (CRLF added to a str) or raw bytes; the replies it produced."""
        data = line.encode() + b"\r\n" if isinstance(line, str) else line
        self.session.dataReceived(data)
        return self._replies()

    def advance(self, seconds: float) -> list[str]:
        """Let time pass (timers, a plugin's slow answer); replies that came meanwhile."""
        self.clock.advance(seconds)
        return self._replies()

    def _replies(self) -> list[str]:
        """Whole replies ("250 2.1.0 Ok"; a multi-line one's lines joined with "\n")."""
        self.clock.advance(0)  # events are told on the next reactor turn
        text = self.transport.value().decode("utf-8", "replace")
        self.transport.clear()
        replies, current = [], []
        for line in text.split("\r\n")[:-1]:
            current.append(line)
            if line[3:4] != "-":
                replies.append("\n".join(current))
                current = []
        return replies

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def stored(self) -> list[tuple[list[str], bytes]]:
        """Local copies: (mailbox addresses, the message as stored, LF line ends)."""
        return [(addresses, message.header + b"".join(message.body)) for addresses, message in self.memory.copies]

    @property
    def queued(self) -> list[tuple[Envelope, dict[str, str]]]:
        """Queued messages: (envelope, recipient -> route)."""
        return [(envelope, {r: str(route) for r, route in recipients})
                for _, envelope, recipients, _ in self.memory.entries]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self._events.events


def converse(plugins: Iterable[object] = (), config: ConfigLike = None, *, client_ip: str = "127.0.0.1",
             user: str | None = None) -> Conversation:
    """Connect to a server running `plugins` (asked first) over the built-ins, as the client at `client_ip`.

    `user` stands for a session that has authenticated as that address.
    """
    return Conversation(plugins, config, client_ip, user)
