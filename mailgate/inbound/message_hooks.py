"""The end of DATA as plugins see it: each `mailgate_message` plugin in turn, its changes applied.

Plugins are asked in order, each with the message as the ones before it
left it (the fields they added on top included: a plugin asked after the
authentication checks reads their Authentication-Results field); a
refusal ends the asking. What a plugin changes is checked as
DATA itself is checked (size, line length, line ends, NUL), because a
plugin must not be a way to store what a client could not send. Nothing
here runs, and the message is never joined into one bytes object, when no
plugin implements the hook.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailgate.core.message_change import MessageChange
from mailgate.core.reply import Reply
from mailgate.core.route import Route, RouteError
from mailgate.core.session import Envelope
from mailgate.core.wire import MAX_TEXT_LINE
from mailgate.hooks.calling import Hooks, as_refusal, failed

HOOK = "mailgate_message"
_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 3.6.8 ftext
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_UNFOLDED = re.compile(rb"\r\n(?![ \t])")


@dataclass
class Changed:
    """The message after every plugin: CRLF bytes, header fields to add, new routes."""

    message: bytes
    replaced: bool = False
    headers: list[bytes] = field(default_factory=list)  # "Name: value\r\n" each
    routes: dict[str, Route] = field(default_factory=dict)


async def run_message_hooks(hooks: Hooks, envelope: Envelope, message: bytes, max_size: int) -> Reply | Changed:
    """Ask every plugin; a refusal, or what they changed (a plugin's mistake raises HookFailed)."""
    changed = Changed(message)
    seen = message  # what the next plugin is shown: joined again only when a plugin changed it
    for plugin, ask in hooks.plugins(HOOK):
        answer = await ask(session=envelope.session, envelope=envelope, message=seen)
        if answer is None:
            continue
        if not isinstance(answer, MessageChange):
            return as_refusal(HOOK, plugin, answer)
        _apply(plugin, answer, changed, envelope, max_size)
        seen = b"".join(changed.headers) + changed.message if changed.headers else changed.message
    return changed


def _apply(plugin: str, change: MessageChange, changed: Changed, envelope: Envelope, max_size: int) -> None:
    if change.message is not None:
        problem = message_problem(change.message, max_size)
        if problem:
            raise failed(HOOK, plugin, f"replacement message refused: {problem}")
        changed.message, changed.replaced = change.message, True
        changed.headers = []  # the plugin saw them on top: its message holds what it kept of them
    for name, value in change.headers:
        changed.headers.append(_field(plugin, name, value))
    for recipient, text in change.routes.items():
        changed.routes[recipient] = _route(plugin, recipient, text, envelope)
    if sum(map(len, changed.headers)) + len(changed.message) > max_size:
        raise failed(HOOK, plugin, "the changed message is over limits.max_message_size")


def message_problem(message: bytes, max_size: int) -> str:
    """Why a message could not have come through DATA, or "" (the DataReader's rules, at once)."""
    if len(message) > max_size:
        return "over limits.max_message_size"
    if b"\0" in message:
        return "NUL character"
    if _BARE_LINE_END.search(message):
        return "bare CR or LF"
    if max(map(len, message.split(b"\r\n"))) + 2 > MAX_TEXT_LINE:
        return f"a line over {MAX_TEXT_LINE} octets"
    return ""


def _field(plugin: str, name: str, value: str) -> bytes:
    """One header field "Name: value\\r\\n"; folding (CRLF then white space) is kept."""
    raw_name, raw_value = name.encode("ascii", "replace"), value.encode("utf-8")
    if not _FIELD_NAME.fullmatch(raw_name):
        raise failed(HOOK, plugin, f"not a header field name: {name!r:.60}")
    if b"\0" in raw_value or _BARE_LINE_END.search(raw_value) or _UNFOLDED.search(raw_value):
        raise failed(HOOK, plugin, f"header {name}: a line end that does not fold the value")
    line = raw_name + b": " + raw_value + b"\r\n"
    if max(map(len, line.split(b"\r\n"))) + 2 > MAX_TEXT_LINE:
        raise failed(HOOK, plugin, f"header {name}: a line over {MAX_TEXT_LINE} octets")
    return line


def _route(plugin: str, recipient: str, text: str, envelope: Envelope) -> Route:
    if recipient not in envelope.routes:
        raise failed(HOOK, plugin, f"routes: {recipient!r} is not a recipient of this message")
    try:
        route = Route(text)
    except RouteError as error:
        raise failed(HOOK, plugin, f"routes: {error}") from None
    if route.scheme == "reject":
        raise failed(HOOK, plugin, "routes: reject: needs a reply per recipient, which DATA cannot give")
    return route
