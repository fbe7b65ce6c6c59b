"""Denial of service over real sockets: each attack runs against a real `twistd mailgate` while a
normal client is served.

Each test asserts that the attack is refused (or its cost to the server is
bounded) and that a normal session started while the attack goes on ends
within NORMAL_DEADLINE_SECONDS: a generous bound, hundreds of times what such
a session takes on an idle server, so this is no throughput measurement.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.gateway import Gateway

ALICE = "alice@example.test"
NORMAL_DEADLINE_SECONDS = 10.0
NO_RATE = '[limits]\nconnection_rate = "off"\n'


# --- measuring the server from outside ------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def unread_octets(sock: socket.socket) -> int:
    """Octets sent on `sock` that its loopback peer has not read yet: the sender's unacknowledged
    send queue plus the receiver's receive queue, from /proc/net/tcp."""
    ours, theirs = sock.getsockname()[1], sock.getpeername()[1]
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        tx_queue, rx_queue = (int(value, 16) for value in fields[4].split(":"))
        if (local, remote) == (ours, theirs):
            total += tx_queue
        elif (local, remote) == (theirs, ours):
            total += rx_queue
    return total


def flood(socks: list[socket.socket], block: bytes, total: int, stall_seconds: float = 2.0) -> list[int]:
    """Send `block` round the non-blocking `socks`, `total` octets in all, or until none takes
    more for `stall_seconds`; the octets each took."""
    sent = [0] * len(socks)
    last_progress = time.monotonic()
    while sum(sent) < total and time.monotonic() - last_progress < stall_seconds:
        moved = False
        for index, sock in enumerate(socks):
            try:
                count = sock.send(block)
            except BlockingIOError:
                continue
            sent[index] += count
            moved = moved or count > 0
        if moved:
            last_progress = time.monotonic()
        else:
            time.sleep(0.01)
    return sent


@contextmanager
def in_background(work: Callable[[], object]) -> Iterator[dict[str, object]]:
    """Run `work` in a thread; on leaving, wait for it. The dict gets `seconds` (its duration),
    and `result` or `error`."""
    outcome: dict[str, object] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = work()
        except Exception as error:  # noqa: BLE001 - reported by the test
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(120)


def normal_smtp_session(gateway: Gateway, source: str = "127.0.0.1") -> dict:
    """One message to ALICE, the way a normal client sends it; sendmail's refused recipients."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=60, source_address=(source, 0)) as client:
        return client.sendmail("bob@remote.test", [ALICE], b"Subject: meanwhile\r\n\r\nserved\r\n")


def assert_served_promptly(outcome: dict[str, object], what: str = "the normal session") -> None:
    assert "error" not in outcome, f"{what} failed: {outcome.get('error')!r}"
    assert outcome["result"] == {}, outcome
    seconds = float(outcome["seconds"])  # type: ignore[arg-type]
    assert seconds < NORMAL_DEADLINE_SECONDS, f"{what} took {seconds:.1f} s"


# --- 1. replies never read ------------------------------------------------------------


def test_client_reading_no_replies_is_stopped_not_buffered(make_gateway) -> None:
    """19 connections (the per-IP limit is 20) pipeline 16 MB of `EHLO a` and read nothing.

    Each EHLO reply is ~20 times the command: buffered, that was +200 MB of RSS. The server
    must stop reading from them once their replies back up (so it has read only a little of
    what they sent, the rest waits in the kernel's queues), stay small, and serve a 20th
    connection from the same address meanwhile."""
    gateway = make_gateway(("smtp",), extra=NO_RATE)
    gateway.add_user(ALICE)
    gateway.start()
    assert normal_smtp_session(gateway) == {}  # imports and first-session allocations paid
    before_kb = rss_kb(gateway.process.pid)
    attackers = [socket.create_connection(("127.0.0.1", gateway.ports["smtp"])) for _ in range(19)]
    try:
        for sock in attackers:
            sock.setblocking(False)
        sent = flood(attackers, b"EHLO a\r\n" * 8192, 16_000_000)
        with in_background(lambda: normal_smtp_session(gateway)) as outcome:
            peak_kb = before_kb
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                peak_kb = max(peak_kb, rss_kb(gateway.process.pid))
                time.sleep(0.1)
        read_by_server = sum(sent) - sum(unread_octets(sock) for sock in attackers)
        assert_served_promptly(outcome)
        assert read_by_server < 8_000_000, f"the server read {read_by_server} of {sum(sent)} octets"
        assert peak_kb - before_kb < 32_000, f"RSS grew {peak_kb - before_kb} kB for {sum(sent)} octets sent"
    finally:
        for sock in attackers:
            sock.close()


# --- 2. commands piling up while a session waits ---------------------------------------


def test_input_piling_up_during_the_auth_delay_stalls_nobody(make_gateway) -> None:
    """`AUTH PLAIN <wrong>` and 2 MB of `NOOP` in one write: the wrong password makes the session
    wait a second before its 535, and the NOOPs arrive meanwhile.

    The server must not read more than a bounded amount while the session waits (the rest stays
    in the kernel), must then answer every NOOP, in order, and must serve a normal client while it
    does (it used to re-slice the 2 MB buffer for each line, 18 s with every other client waiting)."""
    gateway = make_gateway(("smtp",), extra='[security]\nplaintext_auth = "always"\n' + NO_RATE)
    gateway.add_user(ALICE, "secret")
    gateway.start()
    attacker = socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=60)
    try:
        replies = attacker.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        attacker.sendall(b"HELO attacker.test\r\n")
        assert replies.readline().startswith(b"250 ")
        noops = 2_000_000 // 6
        wrong = base64.b64encode(b"\0" + ALICE.encode() + b"\0wrong password").decode()
        payload = f"AUTH PLAIN {wrong}\r\n".encode() + b"NOOP\r\n" * noops
        attacker.setblocking(False)
        sent = flood([attacker], payload, len(payload), stall_seconds=0.5)[0]  # while the 535 waits
        time.sleep(0.3)  # time to read what it would (replies unread: it cannot go far past the 535)
        read_by_server = sent - unread_octets(attacker)
        assert read_by_server < 256 * 1024, f"the waiting session read {read_by_server} of {sent} octets"
        attacker.settimeout(60)
        with in_background(lambda: attacker.sendall(payload[sent:])):
            assert replies.readline().startswith(b"535 ")  # now the NOOPs are being answered
            with in_background(lambda: normal_smtp_session(gateway, "127.0.0.2")) as outcome:
                answered = sum(1 for _ in range(noops) if replies.readline().startswith(b"250 "))
        assert answered == noops
        assert_served_promptly(outcome)
    finally:
        attacker.close()
