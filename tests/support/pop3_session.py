"""Driving POP3 sessions in memory: a reactor whose thread pool runs at once, fake accounts."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides


class ImmediatePool:
    """A thread pool that runs work at once, or holds it until release() when held."""

    def __init__(self) -> None:
        self.held = False
        self.waiting: list[Callable[[], None]] = []

    def callInThreadWithCallback(self, on_result: Callable[..., None], function: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            try:
                result = function(*args)
            except Exception as error:  # noqa: BLE001 - handed to the Deferred
                on_result(False, error)
                return
            on_result(True, result)

        if self.held:
            self.waiting.append(run)
        else:
            run()

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for run in waiting:
            run()


class FakeReactor(Clock):
    """IReactorTime plus the two thread methods deferToThreadPool needs."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = ImmediatePool()

    def getThreadPool(self) -> ImmediatePool:
        return self.pool

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        function(*args)


class FakeAccounts:
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.broken = False

    def verify(self, address: str, password: str) -> bool:
        if self.broken:
            raise OSError("users file unreadable")
        return self.passwords.get(address.lower()) == password


class TLSCapableTransport(StringTransport):
    """StringTransport that records startTLS and TCP_NODELAY as a TCP transport would."""

    def __init__(self, peer_ip: str = "192.0.2.7") -> None:
        from twisted.internet.address import IPv4Address

        super().__init__(peerAddress=IPv4Address("TCP", peer_ip, 40000))
        self.tls_started_with: object = None
        self.no_delay = False

    def startTLS(self, options: object) -> None:
        self.tls_started_with = options
        directlyProvides(self, ISSLTransport)

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


def message_name(n: int, data: bytes) -> str:
    crlf_size = len(data) + data.count(b"\n")
    return f"{1700000000 + n}.M{n}P1Q{n}.test,S={len(data)},W={crlf_size}"


def unstuff(body: bytes) -> bytes:
    """Undo dot-stuffing of a multi-line response body (terminator already removed)."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
