"""mailgate.ops.metrics: what the events and counting points make of the Prometheus text."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailgate.outbound.entry import QueuedMessage, RecipientState
from mailgate.outbound.queue_index import QueueIndex
from mailgate.ops.metrics import Metrics, QueueGauges


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def event(kind: str, **fields: object) -> dict[str, object]:
    return {"type": kind, "queue_id": "Q1", "mail_from": "a@x.test", "recipient": "b@y.test", "route": "mx",
            "reply": "", "client": "", "attempt": 0, **fields}


def test_events_count_messages_refusals_and_outcomes() -> None:
    metrics = Metrics()
    metrics.count_event(event("received", listener="mx"))
    metrics.count_event(event("received", listener="mx", recipient="c@y.test"))  # same message
    metrics.count_event(event("received", listener="mx", queue_id="Q2"))
    metrics.count_event(event("refused", reply="554 5.7.1 Relay access denied"))
    metrics.count_event(event("refused", recipient="", reply="550 5.7.1 no"))  # MAIL FROM: no recipient
    metrics.count_event(event("delivered", route="local", delay=0.0))
    metrics.count_event(event("deferred", route="smtp:10.0.0.1:25", delay=3.0))
    metrics.count_event(event("expired", delay=500000.0))
    found = samples(metrics)
    assert found[("mailgate_messages_received_total", (("listener", "mx"),))] == 2
    assert found[("mailgate_recipients_refused_total", (("code", "554"),))] == 1
    assert ("mailgate_recipients_refused_total", (("code", "550"),)) not in found
    assert found[("mailgate_deliveries_total", (("result", "delivered"), ("scheme", "local")))] == 1
    assert found[("mailgate_deliveries_total", (("result", "deferred"), ("scheme", "smtp")))] == 1
    assert found[("mailgate_deliveries_total", (("result", "bounced"), ("scheme", "mx")))] == 1
    assert found[("mailgate_delivery_delay_seconds_count", (("scheme", "local"),))] == 1


def test_counting_points_and_process_metrics() -> None:
    metrics = Metrics()
    metrics.session_opened("smtp", "mx")
    metrics.session_closed("smtp", "mx", 0.3)
    metrics.session_opened("pop3", "pop3")
    metrics.auth_failed("pop3")
    metrics.webhook_answered("tickets", "503")
    found = samples(metrics)
    assert found[("mailgate_smtp_sessions_total", (("listener", "mx"),))] == 1
    assert found[("mailgate_smtp_session_duration_seconds_bucket", (("le", "0.5"), ("listener", "mx")))] == 1
    assert found[("mailgate_pop3_sessions_total", ())] == 1
    assert found[("mailgate_auth_failures_total", (("protocol", "pop3"),))] == 1
    assert found[("mailgate_webhook_requests_total", (("name", "tickets"), ("status", "503")))] == 1
    assert found[("process_resident_memory_bytes", ())] > 0


def test_queue_gauges_are_a_copy_with_bounded_destinations() -> None:
    index = QueueIndex()
    for number in range(5):
        recipients = [RecipientState(f"r{n}@d{number}.test", "mx") for n in range(number + 1)]
        index.note(QueuedMessage(f"Q{number}", "s@x.test", 1000.0 + number, recipients))
    gauges = QueueGauges(destinations=2, wall_clock=lambda: 1100.0)
    metrics = Metrics()
    metrics.registry.unregister(metrics.queue)
    metrics.registry.register(gauges)
    assert samples(metrics)[("mailgate_queue_messages", ())] == 0  # nothing copied yet
    gauges.refresh(index)
    found = samples(metrics)
    assert found[("mailgate_queue_messages", ())] == 5
    assert found[("mailgate_queue_oldest_seconds", ())] == 100
    by_destination = {labels[0][1]: value for (name, labels), value in found.items()
                      if name == "mailgate_queue_destination_messages"}
    assert by_destination == {"d0.test": 1, "d1.test": 1, "other": 3}  # one message each: ties by name
