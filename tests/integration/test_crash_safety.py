"""Crash safety end to end: SIGKILL at random moments under a client loop, SIGTERM mid-DATA.

A real `twistd mailgate` takes numbered messages from smtplib while a timer
kills it with SIGKILL a random 0-300 ms after a random number of 250s; it is
restarted on the same directory, five times. Every serial the client heard
250 for must then be stored exactly once (a Maildir's new/, or the outbound
queue's msg/ + env/), complete. A message whose DATA got no final reply (the
kill) may be absent or present; one refused with a reply must be absent.

The seed is printed; `MAILGATE_CRASH_SEED=N pytest -s tests/test_crash_safety.py`
replays a run's message sizes and kill points (not the kernel's timing).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.gateway import BIN, Gateway, free_port, wait_for

ALICE = "alice@example.test"
BOB = "bob@remote.test"
CAROL = "carol@remote.test"
KILL_CYCLES = 5
ACKS_BEFORE_KILL = (12, 28)  # 250s heard in a cycle before the kill timer is armed
KILL_DELAY_SECONDS = (0.0, 0.3)
BODY_LINES = (2, 800)  # 78-octet lines: ~150 B to ~62 KB, so kills land inside writes too
CYCLE_DEADLINE_SECONDS = 60.0
CLIENT_TIMEOUT_SECONDS = 15.0
SERIAL = re.compile(rb"^Subject: crash test serial (\d+)$", re.MULTILINE)

# A remote recipient stays queued: the smarthost's port is closed, so the first
# attempt fails at once (temporary) and the next is an hour away.
QUEUED_CONFIG = """
[relay]
allowed_networks = ["127.0.0.0/8"]
smarthost = "127.0.0.1:{closed_port}"
retry_intervals = ["1h"]
"""
NO_CONNECTION_RATE = """
[limits]
connection_rate = "off"
"""


# --- the client's ledger -----------------------------------------------------------


def message_for(serial: int, token: str, body_lines: int, sender: str, recipient: str) -> bytes:
    """A numbered message in wire form (CRLF); its last line names the serial."""
    filler = b"".join(b"%05d " % serial + b"x" * 70 + b"\r\n" for _ in range(body_lines))
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: crash test serial {serial}\r\n"
        f"Message-ID: <crash-{serial}.{token}@client.test>\r\n\r\n"
    ).encode() + filler + b"end of message %d\r\n" % serial


@dataclass
class Ledger:
    """What the client sent and heard, by serial."""

    messages: dict[int, bytes] = field(default_factory=dict)  # every serial sent, wire form
    acked: set[int] = field(default_factory=set)  # 250 to the final dot
    refused: dict[int, int] = field(default_factory=dict)  # another reply to the final dot
    unanswered: set[int] = field(default_factory=set)  # no reply: cut off by the kill
    reconnects: int = 0


class Client:
    """smtplib, one session at a time, reopened after each reset; never resends a serial."""

    def __init__(self, port: int, sender: str, recipient: str, rng: random.Random, ledger: Ledger) -> None:
        self._port, self._sender, self._recipient = port, sender, recipient
        self._rng, self._ledger = rng, ledger
        self._token = f"{os.getpid()}.{time.time_ns()}"
        self._session: smtplib.SMTP | None = None

    def send_next(self) -> bool:
        """Send the next serial; True if it got 250. False also when no session could be opened."""
        try:
            session = self._open()
        except (OSError, smtplib.SMTPException):
            self.drop()
            return False
        serial = len(self._ledger.messages) + 1
        message = message_for(serial, self._token, self._rng.randint(*BODY_LINES), self._sender, self._recipient)
        self._ledger.messages[serial] = message
        try:
            session.mail(self._sender)
            code, _ = session.rcpt(self._recipient)
            assert code == 250, f"RCPT TO refused: {code}"
            code, _ = session.data(message)
        except (OSError, smtplib.SMTPException):
            self._ledger.unanswered.add(serial)  # reset, EOF or timeout: the kill
            self.drop()
            return False
        if code != 250:
            self._ledger.refused[serial] = code
            return False
        self._ledger.acked.add(serial)
        return True

    def _open(self) -> smtplib.SMTP:
        if self._session is None:
            self._ledger.reconnects += 1
            self._session = smtplib.SMTP("127.0.0.1", self._port, timeout=CLIENT_TIMEOUT_SECONDS)
            self._session.ehlo("client.test")
        return self._session

    def drop(self) -> None:
        if self._session is not None:
            self._session.close()  # no QUIT: the server is gone or going
            self._session = None


# --- kill and restart ------------------------------------------------------------


def restart(gateway: Gateway, run: int) -> None:
    """Start on the same directory; a log file per run, so 'mailgate started' is this run's."""
    gateway.log_path = gateway.root / f"twistd-{run}.log"
    gateway.start()


def deliver_until_killed(gateway: Gateway, client: Client, rng: random.Random) -> None:
    """Deliver while alive; after a random number of 250s, SIGKILL after a random delay."""
    assert gateway.process is not None
    acks_wanted, delay = rng.randint(*ACKS_BEFORE_KILL), rng.uniform(*KILL_DELAY_SECONDS)
    killer: threading.Timer | None = None
    acks = 0
    deadline = time.monotonic() + CYCLE_DEADLINE_SECONDS
    while killer is None or not killer.finished.is_set():
        assert time.monotonic() < deadline, f"no progress; gateway log:\n{gateway.log()[-3000:]}"
        assert killer is not None or gateway.process.poll() is None, f"gateway died:\n{gateway.log()[-3000:]}"
        acks += client.send_next()
        if killer is None and acks >= acks_wanted:
            killer = threading.Timer(delay, gateway.process.kill)
            killer.start()
    assert gateway.process.wait(30) == -signal.SIGKILL
    client.drop()


def run_kill_cycles(gateway: Gateway, sender: str, recipient: str) -> tuple[Ledger, int, set[str]]:
    """KILL_CYCLES kill/restart cycles; the gateway is left running after the last restart."""
    seed = int(os.environ.get("MAILGATE_CRASH_SEED", random.randrange(1 << 32)))
    print(f"\ncrash test seed {seed} (MAILGATE_CRASH_SEED={seed} replays it)")
    rng, ledger = random.Random(seed), Ledger()
    client = Client(gateway.ports["smtp"], sender, recipient, rng, ledger)
    leftovers: set[str] = set()  # files in any tmp/ right after a kill
    gateway.start()
    for run in range(1, KILL_CYCLES + 1):
        deliver_until_killed(gateway, client, rng)
        leftovers.update(str(p.relative_to(gateway.root)) for p in gateway.root.glob("var/**/tmp/*"))
        restart(gateway, run)
    return ledger, seed, leftovers


# --- what is on disk ---------------------------------------------------------------


def serial_of(data: bytes) -> int | None:
    found = SERIAL.search(data.split(b"\n\n", 1)[0])
    return int(found.group(1)) if found else None


def check_stored(data: bytes, ledger: Ledger, trace: bytes) -> int:
    """The serial of a stored copy, after checking it is that message, whole:
    mailgate's trace lines, then the message as sent with LF line ends."""
    serial = serial_of(data)
    assert serial in ledger.messages, f"a stored message the client never sent: {data[:300]!r}"
    sent = ledger.messages[serial].replace(b"\r\n", b"\n")
    assert data.endswith(sent), f"serial {serial} is incomplete or altered ({len(data)} octets stored)"
    head = data[: -len(sent)]
    assert head.startswith(trace) and head.count(b"\nReceived: ") + head.startswith(b"Received: ") == 1, head
    return serial


@dataclass
class Figures:
    sent: int
    acknowledged: int
    refused: int
    unanswered: int
    found: int
    found_unacknowledged: int
    duplicates: int
    lost: int

    def show(self, what: str, seed: int, extra: str = "") -> None:
        print(f"crash test ({what}, seed {seed}): " + ", ".join(f"{k}={v}" for k, v in vars(self).items()) + extra)


def tally(ledger: Ledger, found: list[int]) -> Figures:
    counts: dict[int, int] = {}
    for serial in found:
        counts[serial] = counts.get(serial, 0) + 1
    return Figures(
        sent=len(ledger.messages),
        acknowledged=len(ledger.acked),
        refused=len(ledger.refused),
        unanswered=len(ledger.unanswered),
        found=len(counts),
        found_unacknowledged=len(set(counts) - ledger.acked),
        duplicates=sum(n - 1 for n in counts.values()),
        lost=len(ledger.acked - set(counts)),
    )


def assert_consistent(ledger: Ledger, found: list[int], figures: Figures) -> None:
    assert figures.acknowledged >= 50, "too few messages got through to mean anything"
    assert figures.lost == 0, f"acknowledged but missing: {sorted(ledger.acked - set(found))}"
    assert figures.duplicates == 0, f"stored more than once: {sorted(s for s in set(found) if found.count(s) > 1)}"
    refused_but_kept = set(ledger.refused) & set(found)
    assert not refused_but_kept, f"refused with a reply, yet stored: {sorted(refused_but_kept)}"
    assert set(found) <= ledger.acked | ledger.unanswered


# --- the tests -------------------------------------------------------------------


@pytest.fixture
def crash_gateway(make_gateway) -> Gateway:
    gateway = make_gateway(("smtp",), extra=QUEUED_CONFIG.format(closed_port=free_port()) + NO_CONNECTION_RATE)
    gateway.add_user(ALICE)
    return gateway


def test_sigkill_under_load_loses_no_acknowledged_local_mail(crash_gateway: Gateway) -> None:
    """Local delivery: every 250 is one complete file in new/ after five SIGKILLs."""
    gateway = crash_gateway
    ledger, seed, leftovers = run_kill_cycles(gateway, BOB, ALICE)
    mailbox = gateway.mailbox(ALICE)
    stale_tmp = list((mailbox / "tmp").iterdir())
    linked = sum(path.stat().st_nlink > 1 for path in stale_tmp)  # the kill fell between link and unlink
    client = Client(gateway.ports["smtp"], BOB, ALICE, random.Random(seed), ledger)
    assert client.send_next(), "the restarted gateway refused mail"
    client.drop()
    files = sorted([*(mailbox / "new").iterdir(), *(mailbox / "cur").iterdir()])
    trace = f"Return-Path: <{BOB}>\nReceived: ".encode()
    found = [check_stored(path.read_bytes(), ledger, trace) for path in files]
    figures = tally(ledger, found)
    figures.show("local Maildir", seed, f", reconnects={ledger.reconnects}, tmp leftovers seen after kills="
                 f"{len(leftovers)}, in tmp/ after the last restart={len(stale_tmp)} ({linked} also linked "
                 "in new/), kept until 36 hours old")
    assert_consistent(ledger, found, figures)
    # Kept, never swept while young: another process of the same host may be writing there
    # (test_restart_clears_stale_files_in_maildir_tmp: what is 36 hours old goes).
    assert {path.name for path in (mailbox / "tmp").iterdir()} <= {path.name for path in stale_tmp}
    assert gateway.stop() == -signal.SIGTERM  # the last run is healthy and stops cleanly
    assert "mailgate stopped cleanly" in gateway.log()


def queue_files(gateway: Gateway) -> tuple[set[str], set[str], set[str]]:
    """The names in the spool's msg/, env/ and tmp/."""
    queue = gateway.root / "var" / "queue"
    msg, env, tmp = ({p.name for p in (queue / sub).iterdir()} for sub in ("msg", "env", "tmp"))
    return msg, env, tmp


def queue_is_clean(gateway: Gateway) -> bool:
    """The restart's spool recovery has run: no orphan msg/, nothing in tmp/."""
    messages, envelopes, tmp = queue_files(gateway)
    return messages == envelopes and not tmp


def test_sigkill_under_load_loses_no_acknowledged_queued_mail(crash_gateway: Gateway) -> None:
    """Relayed mail: every 250 is one queue entry (msg/ + env/) after five SIGKILLs."""
    gateway = crash_gateway
    ledger, seed, leftovers = run_kill_cycles(gateway, ALICE, CAROL)
    wait_for(lambda: queue_is_clean(gateway), 20, "the restart to clear the spool's tmp/ and orphans")
    assert gateway.stop() == -signal.SIGTERM  # a quiet spool to read; the last run stopped cleanly
    _, envelopes, _ = queue_files(gateway)
    queue = gateway.root / "var" / "queue"
    found = []
    for queue_id in sorted(envelopes):
        entry = json.loads((queue / "env" / queue_id).read_bytes())
        assert entry["sender"] == ALICE and [r["address"] for r in entry["recipients"]] == [CAROL]
        assert [r["status"] for r in entry["recipients"]] == ["pending"]
        found.append(check_stored((queue / "msg" / queue_id).read_bytes(), ledger, b"Received: "))
    listed = subprocess.run(
        [str(BIN / "mailgate"), "--config", str(gateway.config), "queue", "list", "--json"],
        cwd=gateway.root, check=True, capture_output=True, timeout=60,
    )
    listing = json.loads(listed.stdout)
    assert sorted(item["id"] for item in listing) == sorted(envelopes)
    assert all(item["recipients"] == [CAROL] for item in listing)
    figures = tally(ledger, found)
    figures.show("outbound queue", seed, f", reconnects={ledger.reconnects}, queue entries={len(listing)}, "
                 f"tmp leftovers seen after kills={len(leftovers)}")
    assert_consistent(ledger, found, figures)
    assert not list((gateway.root / "var" / "mail").glob("*/*/new/*")), "a bounce or a stray local copy"


# --- SIGTERM in the middle of a 5 MB message -----------------------------------------


def socket_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the IPv4 TCP socket local_port -> remote_port, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (local_port, remote_port):
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    return None


def all_read_by_server(client: socket.socket, server_port: int) -> bool:
    """Everything the client wrote has left its socket and been read by the server process."""
    client_port = client.getsockname()[1]
    mine, theirs = socket_queues(client_port, server_port), socket_queues(server_port, client_port)
    return mine is not None and theirs is not None and mine[0] == 0 and theirs[1] == 0


def big_body() -> bytes:
    line = b"y" * 76 + b"\r\n"
    return b"Subject: five megabytes\r\n\r\n" + line * (5_000_000 // len(line)) + b"the last line\r\n"


def open_data(gateway: Gateway) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=30)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock.sendall(b"HELO c.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
    return sock, reader


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    gw = make_gateway(("smtp",))
    gw.add_user(ALICE)
    return gw.start()


def test_sigterm_halfway_through_a_five_megabyte_message(gateway: Gateway) -> None:
    """2.5 MB of 5 MB received: SIGTERM gives 421, a clean stop, nothing in new/ or tmp/."""
    sock, reader = open_data(gateway)
    body = big_body()
    half = body[: body.index(b"\r\n", len(body) // 2) + 2]
    sock.sendall(half)
    wait_for(lambda: all_read_by_server(sock, gateway.ports["smtp"]), 30, "the server to read the first half")
    status = gateway.stop(signal.SIGTERM)
    assert reader.readline().startswith(b"421 4.3.2")
    assert reader.readline() == b""  # and the server closed the connection
    sock.close()
    assert status == -signal.SIGTERM
    assert "mailgate stopped cleanly" in gateway.log()
    assert gateway.new_messages(ALICE) == []
    assert not list(gateway.root.glob("var/mail/*/*/tmp/*"))


def test_sigterm_right_after_a_five_megabyte_message_keeps_it_or_refuses_it(gateway: Gateway) -> None:
    """SIGTERM as the final dot goes out: either 250 and the message stored once, whole,
    or no 250 (421, or a reset while input was unread) and nothing stored."""
    sock, reader = open_data(gateway)
    body = big_body()
    sock.sendall(body + b".\r\n")
    gateway.process.send_signal(signal.SIGTERM)
    try:
        reply = reader.readline()
    except ConnectionResetError:
        reply = b"(reset)"
    sock.close()
    assert gateway.process.wait(30) == -signal.SIGTERM  # stop() would send a second SIGTERM
    assert "mailgate stopped cleanly" in gateway.log()
    stored = gateway.new_messages(ALICE)
    print(f"\nSIGTERM after the final dot of 5 MB: reply {reply[:40]!r}, {len(stored)} stored")
    if reply.startswith(b"250"):
        [path] = stored
        assert path.read_bytes().endswith(body.replace(b"\r\n", b"\n"))
    else:
        assert reply.startswith(b"421 4.3.2") or reply in (b"(reset)", b""), reply
        assert stored == []
    assert not list(gateway.root.glob("var/mail/*/*/tmp/*"))


def test_restart_clears_stale_files_in_maildir_tmp(make_gateway) -> None:
    """A kill between writing tmp/ and unlinking it leaves a file there; the restarted
    gateway must not keep it for ever (Maildir: tmp/ files untouched for 36 hours are garbage)."""
    gateway = make_gateway(("smtp",))
    gateway.add_user(ALICE)
    tmp = gateway.mailbox(ALICE) / "tmp"
    tmp.mkdir(parents=True)
    for sub in ("new", "cur"):
        (tmp.parent / sub).mkdir()
    stale = tmp / "1700000000.M1P1Q1.mx.example.test,S=20,W=22"
    stale.write_bytes(b"Subject: half\n\nwri")
    two_days_ago = time.time() - 48 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    gateway.start()
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        assert client.sendmail(BOB, [ALICE], b"Subject: after\r\n\r\nx\r\n") == {}
    assert gateway.stop() == -signal.SIGTERM
    assert not stale.exists()
