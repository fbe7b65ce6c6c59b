"""Built-in plugin: `[rspamd]`, each message scanned by a running rspamd before it is accepted.

The message goes to rspamd's `/checkv2` with the envelope and the client
in rspamd's request headers (https://rspamd.com/doc/developers/protocol.html).
Its verdict becomes ours: rejected at `reject_score` (or when rspamd says
"reject"), marked with X-Spam headers at `header_score`. Scanning fails
open: an rspamd that is down, slow or answers nonsense lets the message
through unscanned, with one log line, and counts it in `unscanned`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from mailgate import MessageChange, __version__, hookimpl
from mailgate.builtin.http_post import exchange, pooled_client, printable, reactor_or_global, within
from mailgate.config import GatewayConfig, RspamdConfig
from mailgate.core.session import Envelope, Session

log = Logger()

MAX_CONNECTIONS = 20  # kept alive to rspamd: sessions at the end of DATA at once
MAX_ANSWER_BYTES = 1_000_000  # rspamd's JSON is a few KB; more is not an answer
DEFAULT_REJECT_TEXT = "Spam message rejected"
REJECT_TEXT_CHARS = 200


class Unreadable(ValueError):
    """rspamd answered, but not with a verdict."""


class RspamdScanner:
    """Asks rspamd about every message (`mailgate_message`); `reactor` and `http` are for tests.

    `unscanned` counts the messages accepted without a verdict.
    """

    def __init__(self, reactor: Any = None, http: Any = None) -> None:
        self._reactor = reactor
        self._http = http
        self._pool: HTTPConnectionPool | None = None
        self._settings = RspamdConfig()
        self.unscanned = 0

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig) -> None:
        self._settings = config.rspamd
        if not self._settings.url:
            return
        self._reactor = reactor_or_global(self._reactor)
        if self._http is None:
            self._http, self._pool = pooled_client(self._reactor, MAX_CONNECTIONS)
            self._reactor.addSystemEventTrigger("before", "shutdown", self.close)

    def close(self) -> Deferred | None:
        """Drop idle pooled connections (at shutdown, and for tests)."""
        return self._pool.closeCachedConnections() if self._pool is not None else None

    @hookimpl
    def mailgate_message(self, session: Session, envelope: Envelope, message: bytes) -> Deferred | None:
        if not self._settings.url:
            return None
        return Deferred.fromCoroutine(self.scan(session, envelope, message))

    async def scan(self, session: Session, envelope: Envelope, message: bytes) -> str | MessageChange | None:
        """rspamd's verdict as mailgate_message's answer: a refusal, a change, or None."""
        settings = self._settings
        url = settings.url.rstrip("/") + "/checkv2"
        posted = Deferred.fromCoroutine(
            exchange(self._http, url, request_headers(session, envelope), message, MAX_ANSWER_BYTES))
        try:
            answer = await within(posted, settings.timeout_seconds, self._reactor)
            if not answer.ok:
                raise Unreadable(str(answer))
            score, action, text = verdict(answer.body)
        except Exception as exc:  # down, slow, or nonsense: scanning fails open
            self.unscanned += 1
            log.warn("rspamd: message from {client} accepted unscanned: {error}",
                     client=session.peer or "?", error=f"{type(exc).__name__}: {exc}")
            return None
        if action == "reject" or score >= settings.reject_score:
            log.info("rspamd: message from {client} refused (score {score:.2f}, {action})",
                     client=session.peer or "?", score=score, action=action)
            return f"550 5.7.1 {printable(text, REJECT_TEXT_CHARS) or DEFAULT_REJECT_TEXT}"
        if score >= settings.header_score:
            return MessageChange(headers=[("X-Spam", "Yes"), ("X-Spam-Score", f"{score:.2f}")])
        return None


def request_headers(session: Session, envelope: Envelope) -> Headers:
    """rspamd's own request headers: the envelope, the client, the authenticated user."""
    headers = Headers({"User-Agent": [f"mailgate/{__version__}"]})
    headers.setRawHeaders("From", [envelope.mail_from or "<>"])
    headers.setRawHeaders("Rcpt", list(envelope.rcpt_to))
    fields = {"IP": session.peer, "Helo": session.helo, "User": session.user,
              "Queue-Id": getattr(envelope, "queue_id", None)}
    for name, value in fields.items():
        if value:
            headers.setRawHeaders(name, [str(value)])
    return headers


def verdict(body: bytes) -> tuple[float, str, str]:
    """(score, action, SMTP text) from a /checkv2 answer; Unreadable if it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        raise Unreadable(f"not JSON: {body[:60]!r}") from None
    if not isinstance(document, dict):
        raise Unreadable("not a JSON object")
    score, action = document.get("score"), document.get("action")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise Unreadable(f"no score: {str(document)[:60]}")
    if not isinstance(action, str):
        raise Unreadable(f"no action: {str(document)[:60]}")
    messages = document.get("messages")
    text = messages.get("smtp_message") if isinstance(messages, dict) else None
    return float(score), action, text if isinstance(text, str) else ""
