"""/metrics with server.workers = 2, over HTTP from the running server: every worker's counts, and restarts."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from mailgate.core.queue_ids import part_of
from tests.integration.test_workers import (
    BOB, NO_RATE, REMOTE, alive, send_batch, served_by_both, served_times, start_workers, with_workers, worker_pids,
)
from tests.support.gateway import Gateway, free_port, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """/metrics, parsed by prometheus-client's own parser: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scraped(port: int, name: str, value: float) -> bool:
    """Whether /metrics answers and shows `name` (no labels) at `value` (worker 0 may be restarting)."""
    try:
        return scrape(port).get((name, ())) == value
    except OSError:
        return False


RESTARTS = "mailgate_worker_restarts_total"
RECEIVED = ("mailgate_messages_received_total", (("listener", "smtp"),))


def test_metrics_count_every_worker_and_each_restart_of_a_killed_worker(
        make_gateway: Callable[..., Gateway]) -> None:
    """Messages taken by both workers all count; SIGKILL to worker 1, then to worker 0 (which serves
    /metrics): each is started again, mailgate_worker_restarts_total goes 0, 1, 2, and the counts of
    the processes that died stay in the totals."""
    metrics_port = free_port()
    gateway = with_workers(make_gateway(extra=NO_RATE + f'[metrics]\nendpoint = "tcp:{metrics_port}"\n'))
    gateway.add_user(BOB)
    start_workers(gateway)
    assert scrape(metrics_port)[(RESTARTS, ())] == 0
    sent: list[str] = []
    while len(sent) < 4 or not served_by_both(gateway, "from=<sender@remote.test>"):
        assert len(sent) < 100, "one worker took every connection"
        send_batch(gateway.ports["smtp"], len(sent), 1, sent)
    wait_for(lambda: scrape(metrics_port).get(RECEIVED) == len(sent), 10, f"{len(sent)} messages counted")

    for index, restarts in ((1, 1), (0, 2)):
        killed = worker_pids(gateway)[index]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: worker_pids(gateway)[index] != killed, 30, f"worker {index} to be started again")
        wait_for(lambda: scraped(metrics_port, RESTARTS, restarts), 30, f"{RESTARTS} {restarts}")
        assert alive(worker_pids(gateway)[index])
    assert scrape(metrics_port).get(RECEIVED) == len(sent)
    assert "Traceback" not in gateway.log()


def test_the_queue_gauges_and_status_page_show_every_workers_part(make_gateway: Callable[..., Gateway]) -> None:
    """Relay mail both workers accepted waits (its smarthost is down); worker 0's /metrics counts all
    of it, and its status page lists each message, whichever worker's part of the spool it is in."""
    metrics_port = free_port()
    gateway = with_workers(make_gateway(extra=NO_RATE + f'[metrics]\nendpoint = "tcp:{metrics_port}"\n' + (
        f'[relay]\nsmarthost = "127.0.0.1:{free_port()}"\nallowed_networks = ["127.0.0.0/8"]\n'
        'retry_intervals = ["1h"]\n')))
    start_workers(gateway)
    sent: list[str] = []
    while min(served_times(gateway, "status=received")) < 2:
        assert len(sent) < 100, "one worker took every connection"
        send_batch(gateway.ports["smtp"], len(sent), 1, sent, REMOTE)
    wait_for(lambda: gateway.log().count("attempt 1:") >= len(sent), 30, "a first (failed) attempt of each")
    wait_for(lambda: scraped(metrics_port, "mailgate_queue_messages", len(sent)), 10, f"{len(sent)} queued")
    queued = re.findall(r"(\w+): attempt 1:", gateway.log())
    assert {part_of(queue_id, 2) for queue_id in queued} == {0, 1}
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10) as response:
        page = response.read().decode()
    assert f"Queue: {len(sent)} message(s)" in page
    assert all(queue_id in page for queue_id in queued)
    assert scrape(metrics_port)[("mailgate_queue_destination_messages", (("destination", "remote.test"),))] == len(sent)
