"""Denial of service over real sockets: each attack runs against a real `twistd mailgate` while a
normal client is served.

Each test asserts that the attack is refused (or its cost to the server is
bounded) and that a normal session started while the attack goes on ends
within NORMAL_DEADLINE_SECONDS: a generous bound, hundreds of times what such
a session takes on an idle server, so this is no throughput measurement.
"""

from __future__ import annotations

import base64
import poplib
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, wait_for

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
    try:
        ours, theirs = sock.getsockname()[1], sock.getpeername()[1]
    except OSError:  # no longer connected: nothing waits
        return 0
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
            except OSError:  # refused and closed (a warm-up session not yet gone still counted)
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


def timed(work: Callable[[], object]) -> dict[str, object]:
    """Run `work` now, while the attack holds what it holds; the outcome as in_background's."""
    with in_background(work) as outcome:
        pass
    return outcome


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


# --- 7. connections that exhaust the descriptors ------------------------------------------

NOFILE = 512  # the gateway's soft RLIMIT_NOFILE in these tests: 448 connections, 64 descriptors kept


def pop3_gateway(make_gateway) -> Gateway:
    gateway = make_gateway(("smtp", "pop3"),
                           extra='[security]\nplaintext_auth = "always"\n[limits]\nconnection_rate = "off"\n')
    gateway.add_user(ALICE, "secret")
    return gateway.start(nofile=NOFILE)


def open_pop3(gateway: Gateway, count: int, addresses: int) -> tuple[list[socket.socket], list[bytes]]:
    """`count` unauthenticated POP3 connections from `addresses` loopback addresses (127.0.1.x),
    each kept open once it has its first line; the sockets and those lines."""
    socks, greetings = [], []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", gateway.ports["pop3"]), timeout=10,
                                        source_address=(f"127.0.1.{1 + n % addresses}", 0))
        socks.append(sock)
        greetings.append(sock.recv(200))
    return socks, greetings


def pop3_login(gateway: Gateway) -> int:
    """Log in as ALICE; how many messages she has."""
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    try:
        client.user(ALICE)
        client.pass_("secret")
        return client.stat()[0]
    finally:
        client.quit()


def test_pop3_connections_from_one_address_are_capped(make_gateway) -> None:
    """1000 POP3 connections from one address, held open: 20 are served (limits.max_connections_per_ip,
    counted with the SMTP ones), the others hear -ERR and are closed. They used to take every
    descriptor, and SMTP clients were then accepted and closed with an empty banner."""
    gateway = pop3_gateway(make_gateway)
    socks, greetings = open_pop3(gateway, 1000, addresses=1)
    try:
        kinds = [line.split(b" ")[0] for line in greetings]
        assert kinds.count(b"+OK") == 20, {kind: kinds.count(kind) for kind in set(kinds)}
        refused = [line for line in greetings if not line.startswith(b"+OK")]
        assert set(refused) == {b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"}
        assert_served_promptly(timed(lambda: normal_smtp_session(gateway, "127.0.0.2")))
        login = timed(lambda: pop3_login(gateway))  # from 127.0.0.1: poplib cannot choose
        assert login.get("result") == 1, login  # the message just delivered
    finally:
        for sock in socks:
            sock.close()


def test_connections_from_many_addresses_leave_descriptors_in_reserve(make_gateway) -> None:
    """1000 POP3 connections from 200 addresses, held open, under RLIMIT_NOFILE 512. The server must
    stop at limits.max_connections (512 less 64 kept) and refuse the rest, with -ERR or, while the
    refusals themselves pile up within one accept loop, by closing at once; never run out of
    descriptors (Twisted then accepts and drops connections unanswered, SMTP ones too); answer a
    new SMTP client with a 421; and still deliver for a session opened before."""
    gateway = pop3_gateway(make_gateway)
    early = smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30)
    early.ehlo("early.test")
    socks, greetings = open_pop3(gateway, 1000, addresses=200)
    try:
        kinds = [line.split(b" ")[0] for line in greetings]
        assert kinds.count(b"+OK") == NOFILE - 64 - 1, {kind: kinds.count(kind) for kind in set(kinds)}
        refusals = {line for line in greetings if not line.startswith(b"+OK")}
        assert b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n" in refusals
        assert refusals <= {b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n", b""}
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30)
        assert refused.value.smtp_code == 421 and refused.value.smtp_error.startswith(b"4.3.2 ")
        assert time.monotonic() - started < NORMAL_DEADLINE_SECONDS
        during = timed(lambda: early.sendmail("bob@remote.test", [ALICE], b"Subject: during\r\n\r\nx\r\n"))
        assert_served_promptly(during, "the session opened before")
    finally:
        for sock in socks:
            sock.close()
        early.close()
    log = gateway.log()
    assert "EMFILE" not in log and "Too many open files" not in log, log[-2000:]


# --- 8. guessing passwords without waiting for the answers --------------------------------


def smtp_auth(gateway: Gateway, user: str, password: str, source: str = "127.0.0.1",
              wait_seconds: float = 30.0) -> str:
    """One SMTP session: EHLO, AUTH PLAIN; the reply (its first line), or "" if none came within
    `wait_seconds` (then the session is dropped, as an impatient guesser does)."""
    with socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=30,
                                  source_address=(source, 0)) as sock:
        replies = sock.makefile("rb")
        replies.readline()
        sock.sendall(b"EHLO guesser.test\r\n")
        while replies.readline()[3:4] == b"-":
            pass
        sock.sendall(b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n")
        sock.settimeout(wait_seconds)
        try:
            return replies.readline().decode().strip()
        except TimeoutError:
            return ""


def test_auth_guesses_that_do_not_wait_are_refused_unchecked(make_gateway) -> None:
    """Ten parallel connections from one address guess ALICE's password for 3 s, each dropping its
    session if no answer came within 0.5 s (the answer to a failure is delayed). Only the first
    limits.auth_failures_per_account guesses may be checked; then the right password from that address
    hears 454 too. Meanwhile the owner, from another address, and bob, behind the same one, log in."""
    gateway = make_gateway(("smtp",), extra='[security]\nplaintext_auth = "always"\n' + NO_RATE)
    gateway.add_user(ALICE, "secret")
    gateway.add_user("bob@example.test", "bobsecret")
    gateway.start()
    stop_at = time.monotonic() + 3.0
    answers: list[str] = []

    def guess(worker: int) -> None:
        for attempt in range(10_000):
            if time.monotonic() > stop_at:
                return
            answers.append(smtp_auth(gateway, ALICE, f"guess-{worker}-{attempt}", wait_seconds=0.5))

    guessers = [threading.Thread(target=guess, args=(n,), daemon=True) for n in range(10)]
    for thread in guessers:
        thread.start()
    wait_for(lambda: "auth refused: ip=127.0.0.1 user=alice@example.test" in gateway.log(), 3.0,
             "the guesses to be refused unchecked")  # the attack under way and biting
    owner = timed(lambda: smtp_auth(gateway, ALICE, "secret", source="127.0.0.2"))
    neighbour = timed(lambda: smtp_auth(gateway, "bob@example.test", "bobsecret"))
    for thread in guessers:
        thread.join(30)
    assert smtp_auth(gateway, ALICE, "secret").startswith("454 4.7.0 "), "the right password, mid-penalty"
    for outcome in (owner, neighbour):
        assert "error" not in outcome and str(outcome["result"]).startswith("235 "), outcome
        assert float(outcome["seconds"]) < NORMAL_DEADLINE_SECONDS, outcome  # type: ignore[arg-type]
    checked = gateway.log().count("auth failed: SMTP from [127.0.0.1]: user=<alice@example.test>")
    assert 1 <= checked <= 5, f"{checked} of {len(answers)} guesses were checked"
    assert sum(answer.startswith("454 ") for answer in answers) > len(answers) // 2, answers
