"""Operations on a real `twistd mailgate` relaying to a fake MX: /metrics, the status page in a real
headless Chromium, and `queue hold` / `release` served by the running server.

trial TestCases (the fake DNS and MX live in this reactor): every wait is an
asynchronous poll, and the slow outside programs (the CLI, Chromium) run in
threads.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest
from twisted.web.client import HTTPConnectionPool

from tests.support.gateway import Gateway, eventually, free_port
from tests.support.relay_gateway import ACCEPT, ALICE, BOB, CAROL, DEFER, PRIMARY, GatewayTestCase, RawSMTP, pause, submit

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def scrape(port: int) -> Samples:
    """/metrics, parsed by prometheus-client's own parser: {(name, sorted labels): value}."""
    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=False)  # nothing left in the reactor after the test
    response = await treq.get(f"http://127.0.0.1:{port}/metrics", timeout=10, pool=pool)
    text = (await response.content()).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def scraped_until(port: int, done: Callable[[Samples], bool], what: str, seconds: float = 15) -> Samples:
    """Scrape until `done` says the samples are there, or fail at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        found = await scrape(port)
        if done(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}: {found}")
        await pause(0.1)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium as root, with a profile of its own, thrown away after."""
    profile = tempfile.mkdtemp(prefix="mailgate-chromium-")
    try:
        return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        found = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(found or ())


class OperationsTests(GatewayTestCase):
    async def metrics_gateway(self, mx_port: int, **relay: Any) -> tuple[Gateway, int]:
        metrics_port = free_port()
        gateway = self.gateway(mx_port, relay=relay or None,
                               extra=f'\n[metrics]\nendpoint = "tcp:{metrics_port}:interface=127.0.0.1"\n')
        await deferToThread(gateway.add_user, ALICE)
        await self.start(gateway)
        return gateway, metrics_port

    async def test_metrics_count_sent_refused_and_deferred_mail(self) -> None:
        primary = await self.serve(PRIMARY, rcpt_default=DEFER, rcpt_replies={CAROL: ACCEPT})
        gateway, port = await self.metrics_gateway(primary.port)
        wanted = [("mailgate_deliveries_total", (("result", "delivered"), ("scheme", "local"))),
                  ("mailgate_deliveries_total", (("result", "delivered"), ("scheme", "mx"))),
                  ("mailgate_deliveries_total", (("result", "deferred"), ("scheme", "mx"))),
                  ("mailgate_recipients_refused_total", (("code", "550"),))]
        before = await scrape(port)
        self.assertEqual(before[("mailgate_queue_messages", ())], 0)
        self.assertIn(("process_resident_memory_bytes", ()), before)
        self.assertEqual([before.get(key, 0) for key in wanted], [0, 0, 0, 0])
        submit(gateway, "someone@remote.test", [ALICE], b"Subject: local\r\n\r\nhi\r\n")
        sent = submit(gateway, ALICE, [CAROL], b"Subject: sent\r\n\r\nhi\r\n")
        queued = submit(gateway, ALICE, [BOB], b"Subject: remote\r\n\r\nhi\r\n")
        client = RawSMTP(gateway.ports["smtp"])
        client.reply()
        client.command(b"EHLO c.test")
        client.command(b"MAIL FROM:<someone@remote.test>")
        self.assertEqual(client.command(b"RCPT TO:<nobody@example.test>")[0], 550)
        client.close()
        await self.attempted(queued)
        await eventually(lambda: self.entry(sent) is None, "the message to carol to be delivered")

        found = await scraped_until(port, lambda found: all(found.get(key) == 1 for key in wanted)
                                    and found[("mailgate_queue_messages", ())] == 1, "the counters to move")
        self.assertEqual(found[("mailgate_messages_received_total", (("listener", "smtp"),))], 3)
        self.assertGreaterEqual(found[("mailgate_smtp_sessions_total", (("listener", "smtp"),))], 4)
        self.assertEqual(found[("mailgate_queue_destination_messages", (("destination", "remote.test"),))], 1)
        self.assertGreaterEqual(found[("mailgate_queue_oldest_seconds", ())], 0)
        self.assertEqual(found[("mailgate_delivery_delay_seconds_count", (("scheme", "mx"),))], 1)

    async def test_the_status_page_in_chromium_shows_a_queued_recipient_and_its_last_error(self) -> None:
        if shutil.which("chromium") is None:
            raise SkipTest("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
        primary = await self.serve(PRIMARY, rcpt_default="451 4.2.1 mailbox busy, try later")
        gateway, port = await self.metrics_gateway(primary.port)
        queued = submit(gateway, ALICE, [BOB], b"Subject: remote\r\n\r\nhi\r\n")
        await self.attempted(queued)
        url = f"http://127.0.0.1:{port}/"
        dom = await deferToThread(chromium, "--dump-dom", url)
        self.assertEqual(dom.returncode, 0, dom.stderr[-2000:])
        page = dom.stdout
        self.assertIn(BOB, page)
        self.assertIn("451 4.2.1 mailbox busy, try later", page)
        self.assertIn(queued, page)
        self.assertIn("remote.test", page)
        shots = []
        for size in ("390,844", "1280,900"):  # a phone and a desktop window
            png = self.root / f"status-{size.replace(',', 'x')}.png"
            shot = await deferToThread(chromium, f"--screenshot={png}", f"--window-size={size}", url)
            self.assertEqual(shot.returncode, 0, shot.stderr[-2000:])
            shots.append(png)
        for png in shots:
            self.assertGreater(colours(png), 50, f"{png} is nearly one colour")
        self.assertNotEqual(shots[0].read_bytes(), shots[1].read_bytes())

    # Three Chromium starts on a loaded 2-core machine can outlast GatewayTestCase's 90 s.
    test_the_status_page_in_chromium_shows_a_queued_recipient_and_its_last_error.timeout = 300

    async def test_a_held_message_stays_through_flush_and_goes_on_release(self) -> None:
        primary = await self.serve(PRIMARY, rcpt_default=DEFER)
        gateway = await self.start(self.gateway(primary.port, relay={"retry_intervals": ["1h"]}))
        held = submit(gateway, ALICE, [BOB], b"Subject: held\r\n\r\none\r\n")
        other = submit(gateway, ALICE, [CAROL], b"Subject: other\r\n\r\ntwo\r\n")
        await self.attempted(held)
        await self.attempted(other)
        done = await self.cli(gateway, "queue", "hold", held)
        self.assertEqual((done.returncode, done.stdout), (0, f"held {held}\n"), done.stderr)
        listed = {item["id"]: item for item in await self.queue_list(gateway)}
        self.assertEqual((listed[held]["held"], listed[other]["held"]), (True, False))
        primary.rcpt_default = ACCEPT
        flushed = await self.cli(gateway, "queue", "flush")
        self.assertEqual(flushed.returncode, 0, flushed.stderr)
        await eventually(lambda: self.entry(other) is None, "the message not held to be delivered by the flush")
        self.assertEqual(len(primary.messages), 1)
        self.assertIn(b"two", primary.messages[0])
        entry = self.entry(held)
        assert entry is not None
        self.assertTrue(entry.held)
        self.assertEqual(entry.attempts, 1)
        released = await self.cli(gateway, "queue", "release", held)
        self.assertEqual((released.returncode, released.stdout), (0, f"released {held}\n"), released.stderr)
        await self.queue_empty()
        self.assertEqual(len(primary.messages), 2)
        shown = await self.cli(gateway, "queue", "show", held)
        self.assertEqual(shown.returncode, 1)  # delivered: no longer queued
