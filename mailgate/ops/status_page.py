"""The status page: listeners, the queue by destination, recent events and their rates, as one HTML page.

Plain HTML and CSS with an inline SVG plot: no script, no external
resource, so it works in any browser and behind any proxy. It reloads
itself every REFRESH_SECONDS (meta refresh); the layout is one column on a
phone and two on a desktop window. Everything shown is escaped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any

from mailgate import __version__
from mailgate.outbound.queue_index import Summary
from mailgate.ops.queue_view import QueueView
from mailgate.ops.plot import rates_svg
from mailgate.ops.recent import RecentEvents

REFRESH_SECONDS = 10
DESTINATIONS_SHOWN = 20
MESSAGES_PER_DESTINATION = 10
SERIES = (("received", "received", "#0969da"), ("delivered", "delivered", "#1a7f37"),
          ("deferred", "deferred", "#bf8700"), ("bounced", "bounced", "#cf222e"), ("refused", "refused", "#8250df"))

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:12px;color:#1f2328;
background:#f6f8fa}
h1{font-size:1.25rem;margin:0 0 4px}h2{font-size:1.05rem;margin:0 0 8px}
header p{margin:0 0 12px;color:#57606a}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;margin:0 0 12px;min-width:0}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{color:#57606a;font-weight:600;white-space:nowrap}
.error{color:#9a6700}.held{background:#ddf4ff;color:#0550ae;border-radius:4px;padding:0 4px}
.bad{color:#cf222e}.good{color:#1a7f37}.mono{font-family:ui-monospace,monospace;font-size:.85rem}
svg{width:100%;max-width:820px;height:auto;display:block}.muted{color:#57606a}
@media (min-width:960px){main{display:grid;grid-template-columns:1fr 1fr;gap:0 12px}.wide{grid-column:1/-1}}
"""


@dataclass(frozen=True)
class ListenerView:
    name: str
    protocol: str
    endpoint: str
    tls: str
    address: str | None  # where it is bound, or None when it is not


@dataclass(frozen=True)
class StatusView:
    """What the app knows about itself, for the page."""

    hostname: str
    started: float
    generation: int
    reloaded: float | None
    listeners: tuple[ListenerView, ...]


def render(view: StatusView, queue: QueueView, recent: RecentEvents, now: float | None = None) -> str:
    now = time.time() if now is None else now
    up = _age(now - view.started)
    reloaded = f", configuration reloaded {_age(now - view.reloaded)} ago" if view.reloaded is not None else ""
    biggest, others = queue.destination_counts(DESTINATIONS_SHOWN)
    shown = [(destination, count, queue.oldest_for(destination, MESSAGES_PER_DESTINATION))
             for destination, count in biggest]  # once for both sections: each walks the destination's entries
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>mailgate on {escape(view.hostname)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>mailgate on {escape(view.hostname)}</h1><p>mailgate {escape(__version__)}, up {up}, "
        f"configuration generation {view.generation}{reloaded}; {_moment(now)}</p></header><main>",
        _rates(recent), _listeners(view.listeners), _queue_summary(queue, shown, others, now),
        _queue_messages(shown, now),
        _events(recent), "</main></body></html>",
    ])


def _rates(recent: RecentEvents) -> str:
    series = []
    for label, kind, colour in SERIES:
        counts = recent.per_minute(kind)
        if kind == "bounced":
            counts = [a + b for a, b in zip(counts, recent.per_minute("expired"))]
        series.append((label, colour, counts))
    return (f'<section class="wide"><h2>Events per minute, last {recent.minutes} minutes</h2>'
            f"{rates_svg(series, recent.minutes)}</section>")


def _listeners(listeners: tuple[ListenerView, ...]) -> str:
    rows = "".join(
        f"<tr><td>{escape(item.name)}</td><td>{escape(item.protocol)}</td><td>{escape(item.tls)}</td>"
        f"<td>{_listening(item.address)}</td><td class=\"mono\">{escape(item.endpoint)}</td></tr>"
        for item in listeners
    )
    return ('<section><h2>Listeners</h2><div class="scroll"><table><tr><th>name</th><th>protocol</th><th>TLS</th>'
            f"<th>state</th><th>endpoint</th></tr>{rows}</table></div></section>")


def _listening(address: str | None) -> str:
    if address is None:
        return '<span class="bad">not listening</span>'
    return f'<span class="good">listening on</span> <span class="mono">{escape(address)}</span>'


Shown = list[tuple[str, int, list[Summary]]]  # the biggest destinations: name, messages, the oldest few


def _queue_summary(queue: QueueView, shown: Shown, others: int, now: float) -> str:
    oldest = queue.oldest_arrival()
    rows = "".join(
        f"<tr><td>{escape(destination)}</td><td>{count}</td><td>{_oldest_age(first, now)}</td></tr>"
        for destination, count, first in shown
    )
    if others:
        rows += f'<tr><td class="muted">other destinations</td><td>{others}</td><td></td></tr>'
    unread = (f'<p class="muted">{queue.unread} message(s) resumed at start-up are counted, and shown once '
              "their next attempt is made.</p>") if queue.unread else ""
    age = f", the oldest {_age(now - oldest)} old" if oldest is not None else ""
    return (f"<section><h2>Queue: {len(queue)} message(s){age}</h2>{unread}"
            '<div class="scroll"><table><tr><th>destination</th><th>messages</th><th>oldest</th></tr>'
            f"{rows or '<tr><td colspan=3 class=muted>nothing queued</td></tr>'}</table></div></section>")


def _oldest_age(oldest: list[Summary], now: float) -> str:
    return _age(now - oldest[0].arrived) if oldest else ""


def _queue_messages(shown: Shown, now: float) -> str:
    rows = []
    for destination, count, oldest in shown:
        for summary in oldest:
            rows.append(_message_row(destination, summary, now))
        if count > MESSAGES_PER_DESTINATION:
            rows.append(f'<tr><td colspan="6" class="muted">{escape(destination)}: '
                        f"{count - MESSAGES_PER_DESTINATION} more</td></tr>")
    body = "".join(rows) or '<tr><td colspan="6" class="muted">nothing queued</td></tr>'
    return ('<section class="wide"><h2>Queued messages, oldest first by destination</h2><div class="scroll"><table>'
            "<tr><th>destination</th><th>id</th><th>from / to</th><th>age</th><th>attempts, next</th>"
            f"<th>last error</th></tr>{body}</table></div></section>")


def _message_row(destination: str, summary: Summary, now: float) -> str:
    recipients = ", ".join(escape(address) for address, where in summary.recipients if where == destination)
    held = ' <span class="held">held</span>' if summary.held else ""
    next_attempt = "held" if summary.held else _when(summary.next_attempt, now)
    error = escape(summary.last_error) if summary.last_error else '<span class="muted">none yet</span>'
    return (f"<tr><td>{escape(destination)}</td><td class=\"mono\">{escape(summary.queue_id)}{held}</td>"
            f"<td>&lt;{escape(summary.sender)}&gt;<br>{recipients}</td><td>{_age(now - summary.arrived)}</td>"
            f'<td>{summary.attempts}, {next_attempt}</td><td class="error">{error}</td></tr>')


def _events(recent: RecentEvents) -> str:
    rows = "".join(_event_row(event) for event in recent.newest_first())
    body = rows or '<tr><td colspan="6" class="muted">no event since start-up</td></tr>'
    return (f'<section class="wide"><h2>Last {recent.events.maxlen} events, newest first</h2><div class="scroll">'
            "<table><tr><th>time</th><th>type</th><th>id</th><th>from / to</th><th>route</th><th>reply</th></tr>"
            f"{body}</table></div></section>")


def _event_row(event: dict[str, Any]) -> str:
    kind = str(event.get("type", ""))
    css = "bad" if kind in ("bounced", "expired", "refused") else "error" if kind == "deferred" else ""
    client = f" from [{escape(str(event['client']))}]" if event.get("client") else ""
    return (f'<tr><td class="mono">{escape(str(event.get("time", "")))}</td><td class="{css}">{escape(kind)}</td>'
            f'<td class="mono">{escape(str(event.get("queue_id", "")))}</td>'
            f'<td>&lt;{escape(str(event.get("mail_from", "")))}&gt;{client}<br>{escape(str(event.get("recipient", "")))}'
            f'</td><td class="mono">{escape(str(event.get("route", "")))}</td>'
            f'<td>{escape(str(event.get("reply", "")))}</td></tr>')


def _age(seconds: float) -> str:
    """"3 d 4 h", "2 h 5 min", "4 min 10 s", "12 s"."""
    days, rest = divmod(max(0, int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _when(moment: float, now: float) -> str:
    return "due now" if moment <= now else f"in {_age(moment - now)}"


def _moment(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
