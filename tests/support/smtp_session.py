"""Driving SMTP sessions in memory: a factory with real plugins over StringTransport, a Clock."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides

from mailgate import hookimpl
from mailgate.accounts import users_file as users
from mailgate.accounts.cred import AccountsChecker, AddressRealm
from mailgate.builtin import load_plugins
from mailgate.config import GatewayConfig, parse_config
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.limits.auth_throttle import AuthThrottle
from mailgate.smtp.factory import SMTPFactory
from mailgate.smtp.policy import ListenerPolicy
from mailgate.smtp.session import SMTPSession
from mailgate.store.maildir_writer import StoredMessage

ALICE, BOB = "alice@example.test", "bob@example.test"
HOSTNAME = "mx.example.test"
TIMEOUT = 300


class RecordingDeliverer:
    """Stands in for Deliverer: records what it is given, or fails as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Envelope, bytes]] = []
        self.error: Exception | None = None
        self.gate: Deferred[None] | None = None  # when set, delivery waits for it

    async def deliver(self, envelope: Envelope, message: StoredMessage, queue_id: str) -> list[Any]:
        if self.gate is not None:
            await self.gate
        if self.error is not None:
            raise self.error
        self.calls.append((envelope, message.header + b"".join(message.body)))
        return []  # delivered nothing itself: the events tell only of receiving


class Routes:
    """A test plugin: a fixed route (or awaitable) per recipient, asked before the built-ins."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes

    @hookimpl
    def mailgate_route(self, recipient: str, envelope: Envelope) -> Any:
        answer = self.routes.get(recipient)
        return answer() if callable(answer) else answer


class TLSStringTransport(StringTransport):
    """A StringTransport that can "start TLS", becoming an ISSLTransport."""

    tls_options: Any = None

    def startTLS(self, options: Any) -> None:
        self.tls_options = options
        directlyProvides(self, ISSLTransport)


def replies(data: bytes) -> list[str]:
    """Whole replies ("250 2.1.0 Ok"; multi-line ones joined with \\n), in order."""
    out, current = [], []
    for line in data.decode("ascii").split("\r\n")[:-1]:
        current.append(line)
        if re.match(r"\d{3} ", line) or len(line) == 3:
            out.append("\n".join(current))
            current = []
    assert not current, f"unterminated reply: {current}"
    return out


def codes(data: bytes) -> list[int]:
    return [int(reply[:3]) for reply in replies(data)]


class Server:
    """One SMTPFactory with real plugins, a fake deliverer and a Clock; AUTH over the users file if asked."""

    def __init__(self, tmp_path: Path, extra_plugins: tuple[object, ...] = (), tls_options: Any = None,
                 auth: bool = False, **sections: Any) -> None:
        users_file = tmp_path / "users"
        if not users_file.exists():
            users.add_user(str(users_file), ALICE, "secret")
            users.add_user(str(users_file), BOB, "secret")
            users.add_user(str(users_file), "postmaster@example.test", "secret")
        document = {
            "server": {"hostname": HOSTNAME},
            "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525", "tls": "starttls"}],
            "domains": {"local": ["example.test"]},
            "users": {"file": str(users_file)},
            "plugins": {"paths": [], "enable": []},
            **sections,
        }
        self.config: GatewayConfig = parse_config(document)
        manager = load_plugins(self.config, extra=extra_plugins)
        self.clock = Clock()
        manager.hook.mailgate_configure(config=self.config, reactor=self.clock)
        self.deliverer = RecordingDeliverer()
        portal = throttle = None
        if auth:  # passwords checked in the reactor thread: nothing to wait for but the Clock
            checker = AccountsChecker(users.Accounts(str(users_file)), lambda f, *a: maybeDeferred(f, *a))
            portal, throttle = Portal(AddressRealm(), [checker]), AuthThrottle.from_limits(self.config.limits, self.clock)
        self.factory = SMTPFactory(ListenerPolicy(
            self.config, self.config.listen[0], Hooks(manager, self.clock), self.deliverer, self.clock, tls_options,
            portal=portal, throttle=throttle,
        ))

    def connect(self, ip: str = "127.0.0.1", transport: StringTransport | None = None) -> "Client":
        transport = transport or StringTransport(peerAddress=IPv4Address("TCP", ip, 1234))
        protocol = self.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        return Client(protocol, transport)


class Client:
    def __init__(self, protocol: SMTPSession, transport: StringTransport) -> None:
        self.protocol, self.transport = protocol, transport
        self.greeting = transport.value()
        transport.clear()

    def send(self, data: bytes) -> list[str]:
        """Send `data` in one piece; return the replies it produced."""
        self.transport.clear()
        self.protocol.dataReceived(data)
        return replies(self.transport.value())

    def send_codes(self, data: bytes) -> list[int]:
        return [int(reply[:3]) for reply in self.send(data)]

    def lose(self) -> None:
        self.protocol.connectionLost(None)


def transaction(rcpts: list[str] = [ALICE], body: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> bytes:
    return (
        b"MAIL FROM:<sender@remote.test>\r\n"
        + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
        + b"DATA\r\n" + body + b".\r\n"
    )
