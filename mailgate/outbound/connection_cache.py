"""Outbound SMTP sessions kept open for a moment, for the next message to the same host.

A backlog for one destination (a smarthost, a busy MX) otherwise pays a
TCP connection, a greeting, EHLO and often a TLS handshake per message. As
Postfix's connection cache does (smtp_connection_cache_time_limit, 2 s),
a session whose transaction ended cleanly waits briefly for the next
message to the same host name, address and port from the same pool;
unused, it says QUIT. The key holds the host name because a verified TLS
session is only good for the name its certificate was checked against,
and the pool because its source address and EHLO name are the session's.
An idle session still counts against its destination's concurrency, and
is closed (`evict`) when an attempt there needs its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList

from mailgate.outbound.smtp_client import ClientProtocol
from mailgate.outbound.smtp_dialogue import Key

MAX_IDLE_PER_DESTINATION = 100  # per host and pool; a destination's concurrency bounds them all (shaping)
MAX_TRANSACTIONS = 100  # then a fresh session: some servers count messages per session


@dataclass(eq=False)
class OpenSession:
    """A session past EHLO (and STARTTLS), between transactions."""

    protocol: ClientProtocol
    extensions: dict[str, str]  # what EHLO offered, so the next transaction skips it
    transactions: int = 0  # completed on this session
    timer: Any = None  # while cached: its expiry
    site: Any = None  # the destination (mailgate.outbound.shaping.Site) whose budget it counts in


class ConnectionCache:
    """Idle sessions by destination, each closed after `idle_seconds` unused (0: none kept)."""

    def __init__(self, reactor: Any, idle_seconds: float) -> None:
        self._reactor, self._idle_seconds = reactor, idle_seconds
        self._idle: dict[Key, list[OpenSession]] = {}

    def park(self, key: Key, session: OpenSession) -> bool:
        """Keep a session whose last transaction ended cleanly; False: the caller closes it."""
        if (
            self._idle_seconds <= 0
            or session.protocol.error is not None
            or session.transactions >= MAX_TRANSACTIONS
            or len(self._idle.get(key, ())) >= MAX_IDLE_PER_DESTINATION
        ):
            return False
        session.timer = self._reactor.callLater(self._idle_seconds, self._expire, key, session)
        self._idle.setdefault(key, []).append(session)
        if session.site is not None:
            session.site.idle_added()
        return True

    def take(self, key: Key) -> OpenSession | None:
        """A live idle session for `key`, if any; dead ones met on the way are dropped.

        A session the server closed, or that got a reply nobody asked for
        (a 421 on an idle timeout), is not used: its next reply would be
        mistaken for the answer to MAIL.
        """
        waiting = self._idle.get(key)
        while waiting:
            session = waiting.pop()
            session.timer.cancel()
            if session.site is not None:
                session.site.idle_removed(wake=False)
            if session.protocol.error is None and not session.protocol.has_unread_reply():
                self._forget_if_empty(key)
                return session
            session.protocol.connection.abortConnection()
        self._forget_if_empty(key)
        return None

    def evict(self, site: Any) -> bool:
        """Close one idle session of `site` (its place is wanted); False if it has none."""
        for key, waiting in self._idle.items():
            for session in waiting:
                if session.site is site:
                    waiting.remove(session)
                    self._forget_if_empty(key)
                    session.timer.cancel()
                    site.idle_removed(wake=False)
                    _quit(session)
                    return True
        return False

    async def close_all(self) -> None:
        """QUIT every idle session (the server stops) and wait until they are gone."""
        sessions = [session for waiting in self._idle.values() for session in waiting]
        self._idle.clear()
        for session in sessions:
            session.timer.cancel()
        await DeferredList([_quit(session) for session in sessions], consumeErrors=True)

    def _expire(self, key: Key, session: OpenSession) -> None:
        waiting = self._idle.get(key, [])
        if session in waiting:
            waiting.remove(session)
            self._forget_if_empty(key)
            if session.site is not None:
                session.site.idle_removed()
        _quit(session)

    def _forget_if_empty(self, key: Key) -> None:
        if key in self._idle and not self._idle[key]:
            del self._idle[key]


def _quit(session: OpenSession) -> Deferred:
    """An unused session ends without waiting for the 221: the server may have stalled."""
    return Deferred.fromCoroutine(session.protocol.quit(wait_for_reply=False))
