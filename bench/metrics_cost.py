"""What counting costs per message, measured alone (issue #17: metrics on within 5 % of off).

On a shared, noisy machine the harness's `--metrics both` compares two
gateways whose runs differ by more than the 5 % asked about; this times
exactly the work `[metrics] endpoint` adds to one message of the smtp-1k-c50
cell, in this process, so the share can be read against the server CPU per
message the harness measured. Per message the cell costs, with metrics on:
one SMTP session opened and closed (a counter, a histogram), one `received`
and one `delivered` event through the operations plugin's counting and its
recent events (the delivery log line is written with metrics off too, so it
is not in here). The queue gauges are copied once a second, not per message.

    PYTHONPATH=. .venv/bin/python bench/metrics_cost.py                   # 200,000 messages, best of 5
    PYTHONPATH=. .venv/bin/python bench/metrics_cost.py --server-cpu-ms 0.85   # and the share of that
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from mailgate.ops.metrics import Metrics
from mailgate.ops.recent import RecentEvents


def events(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A message's two events, as mailgate.hooks.events makes them for a local delivery."""
    queue_id = f"66199D5FE33FD2C{index:06d}"
    common = {"time": "2026-12-02T01:00:00Z", "queue_id": queue_id, "mail_from": "bench@client.test",
              "recipient": "benchuser@example.test", "route": "local"}
    received = {**common, "type": "received", "reply": "250 2.0.0 Ok", "client": "127.0.0.1", "attempt": 0,
                "listener": "smtp", "size": 1024}
    delivered = {**common, "type": "delivered", "reply": "250 2.0.0 Delivered", "client": None, "attempt": 1,
                 "relay": "local", "delay": 0.004}
    return received, delivered


def per_message_seconds(messages: int) -> float:
    """Seconds of counting per message, for `messages` messages on fresh metrics."""
    metrics, recent = Metrics(), RecentEvents(time.time)
    pairs = [events(i) for i in range(messages)]
    started = time.perf_counter()
    for received, delivered in pairs:
        metrics.session_opened("smtp", "smtp")
        metrics.count_event(received)
        recent.add(received)
        metrics.count_event(delivered)
        recent.add(delivered)
        metrics.session_closed("smtp", "smtp", 0.02)
    return (time.perf_counter() - started) / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--server-cpu-ms", type=float, help="the server CPU per message with metrics off "
                        "(the harness's figure), to print the share counting adds")
    args = parser.parse_args()
    runs = [per_message_seconds(args.messages) for _ in range(args.repeats)]
    best, worst = min(runs), max(runs)
    print(f"counting per message: {best * 1e6:.2f} µs (best of {args.repeats} x {args.messages:,}; "
          f"worst {worst * 1e6:.2f} µs)")
    if args.server_cpu_ms:
        share = 100 * best * 1000 / args.server_cpu_ms
        print(f"share of {args.server_cpu_ms:.3f} ms server CPU per message: {share:.2f} % "
              f"(worst run {100 * worst * 1000 / args.server_cpu_ms:.2f} %)")


if __name__ == "__main__":
    main()
