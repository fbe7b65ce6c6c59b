"""mailgate.ops.status_page: the HTML a browser gets (rendered in Chromium by tests/integration/test_operations)."""

from __future__ import annotations

from mailgate.outbound.entry import QueuedMessage, RecipientState
from mailgate.outbound.queue_index import QueueIndex
from mailgate.ops.recent import RecentEvents
from mailgate.ops.status_page import ListenerView, StatusView, render

NOW = 1_800_000_000.0


def test_the_page_shows_listeners_queue_and_events_escaped() -> None:
    index = QueueIndex()
    entry = QueuedMessage("Q<1>", "a@x.test", NOW - 4000, [RecipientState("b@remote.test", "mx")],
                          attempts=3, next_attempt=NOW + 60, last_error="451 4.2.1 <busy> & full")
    index.note(entry)
    held = QueuedMessage("Q2", "a@x.test", NOW - 10, [RecipientState("c@remote.test", "mx")], held_since=NOW - 5)
    index.note(held)
    recent = RecentEvents(lambda: NOW)
    recent.add({"type": "refused", "time": "2027-01-15T08:00:00Z", "queue_id": "", "mail_from": "x@y.test",
                "recipient": "v@z.test", "route": "", "reply": "554 5.7.1 Relay access denied",
                "client": "192.0.2.7"})
    view = StatusView("mx.example.test", NOW - 90000, 3, NOW - 60,
                      (ListenerView("mx", "smtp", "tcp:25", "starttls", "0.0.0.0:25"),
                       ListenerView("pop3", "pop3", "tcp:110", "none", None)))
    page = render(view, index, recent, now=NOW)
    assert page.startswith("<!doctype html>") and '<meta http-equiv="refresh"' in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external resource
    assert "<script" not in page
    assert "up 1 d 1 h" in page and "generation 3" in page and "reloaded 1 min 0 s ago" in page
    assert "listening on</span> <span class=\"mono\">0.0.0.0:25" in page and "not listening" in page
    assert "Q&lt;1&gt;" in page and "451 4.2.1 &lt;busy&gt; &amp; full" in page and "b@remote.test" in page
    assert "Queue: 2 message(s), the oldest 1 h 6 min old" in page
    assert '<span class="held">held</span>' in page
    assert "554 5.7.1 Relay access denied" in page and "from [192.0.2.7]" in page
    assert "<svg" in page and "refused 1" in page


def test_recent_events_keep_a_hundred_and_count_per_minute() -> None:
    clock = [NOW]
    recent = RecentEvents(lambda: clock[0], keep=100, minutes=60)
    for number in range(150):
        recent.add({"type": "delivered", "queue_id": str(number)})
    clock[0] += 120
    recent.add({"type": "deferred", "queue_id": "late"})
    assert len(recent.events) == 100 and recent.newest_first()[0]["queue_id"] == "late"
    delivered = recent.per_minute("delivered")
    assert len(delivered) == 60 and delivered[-3] == 150 and delivered[-1] == 0
    assert recent.per_minute("deferred")[-1] == 1
    clock[0] += 3600
    recent.add({"type": "received"})
    assert sum(recent.per_minute("delivered")) == 0
