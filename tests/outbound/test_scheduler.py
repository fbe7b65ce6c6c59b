"""Scheduler: scheduling with a Clock, per-recipient results, retries, expiry, bounces."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path
from typing import Callable

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from mailgate import hookimpl
from mailgate.builtin import load_plugins
from mailgate.config import parse_config
from mailgate.core.errors import TemporaryFailure
from mailgate.core.reply import Reply
from mailgate.core.route import Route, host_port
from mailgate.core.session import Envelope
from mailgate.hooks.calling import Hooks
from mailgate.outbound.bounces import BounceSender
from mailgate.outbound.capacity import MAX_CONCURRENT_ATTEMPTS
from mailgate.outbound.pools import NO_POOLS
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound import control
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.smtp_transport import SCHEMES, SMTPTransport
from mailgate.outbound.spool import QueueStore
from mailgate.outbound.spooler import Spooler
from mailgate.outbound.transport import HookTransport, RecipientResult, read_wire_form
from mailgate.store.maildir_writer import StoredMessage

BODY = b"Subject: hello\n\nline one\n.dot line\n"


class ScriptedRelay(SMTPTransport):
    """The SMTP transport's routing, with each delivery answered from a script of reply
    codes per recipient instead of a connection; records calls."""

    def __init__(self, smarthost: str = "") -> None:
        self._smarthost = host_port(smarthost) if smarthost else None
        self.calls: list[tuple] = []
        self.codes: dict[str, list[int]] = {}  # recipient -> codes for successive attempts
        self.options: list[dict] = []  # each delivery's keyword arguments (pool, dsn)
        self.success_action: str | None = "delivered"  # what a success means for NOTIFY=SUCCESS

    def _answer(self, recipients: list[str]) -> list[RecipientResult]:
        results = []
        for rcpt in recipients:
            script = self.codes.get(rcpt, [250])
            code = script.pop(0) if len(script) > 1 else script[0]
            enhanced = {2: "2.0.0", 4: "4.2.0", 5: "5.1.1"}[code // 100]
            results.append(RecipientResult(rcpt, Reply(code, enhanced, f"{code} scripted"), "mx.remote.test",
                                           success_action=self.success_action))
        return results

    _pools = NO_POOLS

    async def deliver_by_mx(self, domain, mail_from, recipients, message_path, **options):
        self.calls.append(("mx", domain, mail_from, list(recipients), Path(message_path).read_bytes()))
        self.options.append(options)
        return self._answer(recipients)

    async def deliver_to_host(self, host, port, mail_from, recipients, message_path, **options):
        self.calls.append(("host", f"{host}:{port}", mail_from, list(recipients)))
        return self._answer(recipients)


class Harness:
    def __init__(self, tmp_path: Path, relay_settings: dict | None = None, plugins: tuple = (),
                 part: tuple[int, int, Callable[[str], None]] | None = None) -> None:
        self.config = parse_config({
            "server": {"hostname": "mx.example.test"},
            "listen": [{"name": "mx", "protocol": "smtp", "endpoint": "tcp:2525"}],
            "domains": {"local": ["example.test"]},
            "relay": {"retry_intervals": ["1m", "5m"], "max_queue_time": "1h", **(relay_settings or {})},
        })
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.relay = ScriptedRelay(self.config.relay.smarthost)
        self.store = QueueStore(str(tmp_path / "queue"))
        self.injected: list[tuple[Envelope, bytes, str]] = []
        self.manager = load_plugins(self.config, plugins)
        self.queue = self.new_queue(part)

    def new_queue(self, part: tuple[int, int, Callable[[str], None]] | None = None) -> Scheduler:
        """A scheduler over the spool, as the service builds it (a worker's: `part`), started."""
        run = lambda f, *a: succeed(f(*a))  # noqa: E731 - the disk, without threads
        self.spooler = Spooler(self.store, run, self.clock.seconds)
        policy = RetryPolicy.from_config(self.config.relay)
        bounces = BounceSender("mx.example.test", policy.max_queue_seconds, self.store.message_path, run,
                               self.inject)
        plugins = HookTransport(Hooks(self.manager, self.clock), lambda job: run(read_wire_form, job.message_path))
        queue = Scheduler(self.spooler, {scheme: self.relay for scheme in SCHEMES}, plugins, bounces, policy,
                          self.clock, run, self.config.relay.delay_warning_seconds)
        if part is not None:
            queue.prepare_spool = False
            queue.share(*part)
        Deferred.fromCoroutine(queue.start())
        return queue

    async def inject(self, envelope: Envelope, message: StoredMessage, queue_id: str) -> None:
        self.injected.append((envelope, message.header + b"".join(message.body), queue_id))

    def submit(self, recipients: list[tuple[str, str]], sender: str = "alice@example.test", queue_id: str = "Q1",
               parameters: dict | None = None, recipient_parameters: dict | None = None) -> None:
        header = b"Return-Path: <x>\nReceived: by mx.example.test (mailgate) id Q1;\n\tdate\n"
        message = StoredMessage.build(header, [BODY], len(BODY), BODY.count(b"\n"))
        envelope = Envelope(mail_from=sender, rcpt_to=[r for r, _ in recipients], parameters=parameters or {},
                            recipient_parameters=recipient_parameters or {})
        routed = [(address, Route(route)) for address, route in recipients]
        Deferred.fromCoroutine(self.spooler.add([(queue_id, envelope, routed, message)]))
        self.spooler.release([queue_id])
        self.clock.advance(0)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_recipients_of_one_domain_share_one_delivery(harness: Harness) -> None:
    harness.submit([("b@remote.test", "mx"), ("c@remote.test", "mx"), ("d@other.test", "mx")])
    calls = sorted((c[1], tuple(c[3])) for c in harness.relay.calls)
    assert calls == [("other.test", ("d@other.test",)), ("remote.test", ("b@remote.test", "c@remote.test"))]
    stored = harness.relay.calls[0][4]
    assert stored.startswith(b"Received: ") and stored.endswith(BODY)  # no Return-Path in the queue
    assert harness.store.load("Q1") is None
    assert harness.injected == []


def test_temporary_failure_is_retried_after_the_interval(harness: Harness) -> None:
    harness.relay.codes["b@remote.test"] = [451, 250]
    harness.submit([("b@remote.test", "mx")])
    entry = harness.store.load("Q1")
    assert (entry.attempts, entry.last_error) == (1, "451 4.2.0 451 scripted")
    assert 60 <= entry.next_attempt - harness.clock.seconds() <= 66
    harness.clock.advance(59)
    assert len(harness.relay.calls) == 1
    harness.clock.advance(8)
    assert len(harness.relay.calls) == 2
    assert harness.store.load("Q1") is None


def test_only_deferred_recipients_are_tried_again(harness: Harness) -> None:
    harness.relay.codes["b@remote.test"] = [451, 250]
    harness.submit([("b@remote.test", "mx"), ("c@remote.test", "mx")])
    harness.clock.advance(70)
    assert [c[3] for c in harness.relay.calls] == [["b@remote.test", "c@remote.test"], ["b@remote.test"]]


def test_permanent_failure_bounces_to_the_sender_from_null(harness: Harness) -> None:
    harness.relay.codes["b@remote.test"] = [550]
    harness.submit([("b@remote.test", "mx"), ("c@remote.test", "mx")])
    [(envelope, report, bounce_id)] = harness.injected
    assert (envelope.mail_from, envelope.rcpt_to, bounce_id) == ("", ["alice@example.test"], "Q1B")
    assert report.startswith(b"Return-Path: <>\n")
    parsed = email.message_from_bytes(report, policy=policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; b@remote.test" in report
    assert b"c@remote.test" not in report.split(b"Content-Type: message/delivery-status")[1].split(b"\n\n--")[0]
    assert harness.store.load("Q1") is None


def test_null_sender_is_never_bounced_to(harness: Harness) -> None:
    harness.relay.codes["b@remote.test"] = [550]
    harness.submit([("b@remote.test", "mx")], sender="")
    assert harness.injected == []
    assert harness.store.load("Q1") is None


def test_expiry_fails_and_bounces(harness: Harness) -> None:
    harness.relay.codes["b@remote.test"] = [451]
    harness.submit([("b@remote.test", "mx")])
    for _ in range(20):
        harness.clock.advance(330)
    assert harness.store.load("Q1") is None
    [(_, report, _)] = harness.injected
    assert b"Status: 4.4.7" in report
    attempts = len(harness.relay.calls)
    assert 10 <= attempts <= 14  # 1m, then 5m repeating, within the hour


def test_smarthost_takes_all_mx_mail(tmp_path: Path) -> None:
    harness = Harness(tmp_path, {"smarthost": "127.0.0.1:2526"})
    harness.submit([("b@remote.test", "mx"), ("c@other.test", "mx")])
    assert harness.relay.calls == [("host", "127.0.0.1:2526", "alice@example.test", ["b@remote.test", "c@other.test"])]


def test_smtp_route_goes_to_its_host(harness: Harness) -> None:
    harness.submit([("b@legacy.test", "smtp:127.0.0.1:2626")])
    assert harness.relay.calls == [("host", "127.0.0.1:2626", "alice@example.test", ["b@legacy.test"])]


class PluginGateway:
    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str], bytes]] = []
        self.fail_first = True

    @hookimpl
    def mailgate_deliver(self, route, envelope, message):
        if not route.startswith("ticket:"):
            return None
        self.seen.append((route, envelope.rcpt_to, message))
        if self.fail_first:
            self.fail_first = False
            raise TemporaryFailure("ticket system busy")
        return True


def test_plugin_scheme_gets_crlf_message_and_temporary_failure_retries(tmp_path: Path) -> None:
    plugin = PluginGateway()
    harness = Harness(tmp_path, plugins=(plugin,))
    harness.submit([("b@hooks.test", "ticket:support")])
    [(route, rcpts, message)] = plugin.seen
    assert (route, rcpts) == ("ticket:support", ["b@hooks.test"])
    assert message.endswith(b"Subject: hello\r\n\r\nline one\r\n.dot line\r\n")
    assert b"\n" not in message.replace(b"\r\n", b"")
    assert harness.store.load("Q1").attempts == 1
    harness.clock.advance(70)
    assert len(plugin.seen) == 2 and harness.store.load("Q1") is None


def test_unknown_scheme_defers(harness: Harness) -> None:
    harness.submit([("b@x.test", "nosuch:thing")])
    entry = harness.store.load("Q1")
    assert entry.pending() and "no plugin delivers" in entry.last_error


def test_restart_resumes_queued_mail(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.relay.codes["b@remote.test"] = [451, 250]
    harness.submit([("b@remote.test", "mx")])
    Deferred.fromCoroutine(harness.queue.stop())  # the old process is gone: nothing of it stays armed
    harness.queue = harness.new_queue()  # as after a crash: a fresh queue over the same spool
    harness.clock.advance(70)
    assert harness.store.load("Q1") is None
    assert len(harness.relay.calls) == 2  # the first attempt, then the new queue's retry


def test_restart_keeps_each_entry_s_next_attempt(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.relay.codes["b@remote.test"] = [451, 250]
    harness.submit([("b@remote.test", "mx")])
    [(queue_id, next_attempt)] = harness.store.next_attempts()
    assert next_attempt == pytest.approx(harness.store.load(queue_id).next_attempt, abs=0.001)
    assert next_attempt - harness.clock.seconds() > 50  # retry_intervals[0], give or take its jitter
    harness.queue = harness.new_queue()
    harness.clock.advance(next_attempt - harness.clock.seconds() - 1)
    assert len(harness.relay.calls) == 1  # not tried again before its time
    harness.clock.advance(2)
    assert len(harness.relay.calls) == 2
    assert harness.store.load(queue_id) is None


def test_flush_and_delete_requests(harness: Harness) -> None:
    harness.relay.codes["b@remote.test"] = [451, 451, 250]
    harness.relay.codes["c@remote.test"] = [451]
    harness.submit([("b@remote.test", "mx")])
    harness.submit([("c@remote.test", "mx")], queue_id="Q2")
    flush = harness.store.request("flush")
    control.serve_requests(harness.queue)
    harness.clock.advance(0)
    assert not Path(flush).exists()
    assert len([c for c in harness.relay.calls if c[3] == ["b@remote.test"]]) == 2
    delete = harness.store.request("delete", "Q2")
    control.serve_requests(harness.queue)
    assert not Path(delete).exists()
    assert harness.store.load("Q2") is None


def test_delay_warning_is_sent_once(tmp_path: Path) -> None:
    harness = Harness(tmp_path, {"delay_warning": "4m"})
    harness.relay.codes["b@remote.test"] = [451]
    harness.submit([("b@remote.test", "mx")])
    assert harness.injected == []  # not yet four minutes
    for _ in range(4):
        harness.clock.advance(330)
    [(envelope, report, report_id)] = harness.injected
    assert (envelope.mail_from, envelope.rcpt_to, report_id) == ("", ["alice@example.test"], "Q1W")
    assert b"Action: delayed" in report and b"Will-Retry-Until: " in report
    assert b"Delayed Mail" in report
    assert harness.store.load("Q1").warned
    harness.clock.advance(330)
    assert len(harness.injected) == 1  # once only


def test_no_delay_warning_by_default(harness: Harness) -> None:
    harness.relay.codes["b@remote.test"] = [451, 451, 451, 250]
    harness.submit([("b@remote.test", "mx")])
    for _ in range(4):
        harness.clock.advance(330)
    assert harness.injected == []


class CountingClock(Clock):
    """A Clock that counts its timers and refuses to be driven into a busy loop."""

    def __init__(self) -> None:
        super().__init__()
        self.timers_set = 0

    def callLater(self, delay, callable, *args, **kw):
        self.timers_set += 1
        assert self.timers_set < 10 * MAX_CONCURRENT_ATTEMPTS, "the queue keeps re-arming its timer"
        return super().callLater(delay, callable, *args, **kw)


def test_a_full_set_of_attempts_sets_no_timer_until_one_ends(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.clock = CountingClock()
    harness.queue = harness.new_queue()
    held: list[Deferred] = []

    async def hang(domain, mail_from, recipients, message_path, **options):
        waiting: Deferred = Deferred()
        held.append(waiting)
        return await waiting

    harness.relay.deliver_by_mx = hang
    waiting_count = MAX_CONCURRENT_ATTEMPTS + 10
    for n in range(waiting_count):
        harness.submit([(f"r{n}@remote.test", "mx")], queue_id=f"Q{n}")
    assert len(held) == MAX_CONCURRENT_ATTEMPTS
    assert [c for c in harness.clock.getDelayedCalls() if c.active()] == []
    before = harness.clock.timers_set
    harness.clock.advance(0)
    assert harness.clock.timers_set == before  # nothing re-armed while every slot is busy

    answered = 0
    while answered < len(held):  # each finished attempt starts the next due one
        held[answered].callback([RecipientResult(f"r{answered}@remote.test", Reply(250, "2.0.0", "ok"), "mx")])
        answered += 1
    assert answered == waiting_count
    assert list(harness.store.entries()) == []


def test_a_first_attempt_reads_nothing_back_and_a_retry_checks_the_entry(harness: Harness, monkeypatch) -> None:
    """The entry just stored is attempted as it is in memory; a later attempt reads it and checks its message."""
    reads: list[str] = []
    load_checked = harness.store.load_checked
    monkeypatch.setattr(harness.store, "load_checked",
                        lambda queue_id: reads.append(queue_id) or load_checked(queue_id))
    harness.relay.codes["b@remote.test"] = [451, 250]
    harness.submit([("b@remote.test", "mx")])
    assert len(harness.relay.calls) == 1 and reads == []
    harness.clock.advance(67)  # the first interval, 1m, and its jitter
    assert len(harness.relay.calls) == 2 and reads == ["Q1"]
    assert harness.store.load("Q1") is None
