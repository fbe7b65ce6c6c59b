"""Resource exhaustion end to end: a full disk under `var/`, and a thousand idle connections.

The full-disk tests mount a 2 MB tmpfs as the gateway's `var/` (state_dir and
maildir_root), so they need root (CI runs as root) and skip otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import BIN, Gateway, free_port, wait_for

ALICE = "alice@example.test"
BOB = "bob@remote.test"
CAROL = "carol@remote.test"
TMPFS_SIZE = "2m"
IDLE_SESSIONS = 1000
FD_HEADROOM = 200  # the gateway's own files, the test's pipes, the 1001st connection

RELAY_AND_LIMITS = """
[relay]
allowed_networks = ["127.0.0.0/8"]
smarthost = "127.0.0.1:{closed_port}"
retry_intervals = ["1h"]
[limits]
max_connections_per_ip = {max_connections}
connection_rate = "off"
"""


def config_extra(max_connections: int = 20) -> str:
    """Remote mail is queued and stays there (the smarthost port is closed)."""
    return RELAY_AND_LIMITS.format(closed_port=free_port(), max_connections=max_connections)


def message(serial: int, body_octets: int = 200) -> bytes:
    line = b"z" * 98 + b"\r\n"
    return b"Subject: resources %d\r\n\r\n" % serial + line * (body_octets // len(line)) + b"end %d\r\n" % serial


def send(gateway: Gateway, body: bytes, rcpts: list[str], sender: str = BOB) -> tuple[int, bytes]:
    """The reply to the final dot, or to the first refused command."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        try:
            client.sendmail(sender, rcpts, body)
        except smtplib.SMTPResponseException as refused:
            return refused.smtp_code, refused.smtp_error
    return 250, b""


# --- a full disk -------------------------------------------------------------------------


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=False, capture_output=True, text=True,
    )
    if result.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a {size} tmpfs as var/ (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_disk_gateway(make_gateway) -> Iterator[Gateway]:
    """A started gateway whose var/ is a 2 MB tmpfs; killed before the unmount."""
    gateway = make_gateway(("smtp",), extra=config_extra())
    gateway.add_user(ALICE)
    var = gateway.root / "var"
    mount_tmpfs(var, TMPFS_SIZE)
    try:
        yield gateway.start()
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()
        if subprocess.run(["umount", str(var)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(var)], check=True)


def fill(path: Path, leave_octets: int = 0) -> None:
    """Write `path` until fewer than `leave_octets` remain free on its file system."""
    chunk = b"\0" * 16384
    with open(path, "wb", buffering=0) as handle:
        while True:
            stat = os.statvfs(path)
            free = stat.f_bavail * stat.f_frsize
            if free <= leave_octets + len(chunk):
                break
            handle.write(chunk)
        if leave_octets:
            return
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        # a tmpfs may still take a partial page; leave it really full
        try:
            while True:
                handle.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def stored_intact(gateway: Gateway, bodies: dict[int, bytes]) -> None:
    """Each body is in alice's new/ exactly once, whole, and nothing else is."""
    stored = [path.read_bytes() for path in gateway.new_messages(ALICE)]
    assert len(stored) == len(bodies)
    for serial, body in bodies.items():
        assert sum(data.endswith(body.replace(b"\r\n", b"\n")) for data in stored) == 1, serial


def test_full_disk_answers_452_keeps_mail_and_recovers(small_disk_gateway: Gateway) -> None:
    """Disk full: 452 4.3.1 for local and queued mail; what was accepted stays intact;
    deleting the filler is enough for mail to be accepted again (no restart)."""
    gateway = small_disk_gateway
    var = gateway.root / "var"
    accepted = {serial: message(serial) for serial in range(1, 4)}
    for body in accepted.values():
        assert send(gateway, body, [ALICE]) == (250, b"")
    assert send(gateway, message(90), [CAROL], sender=ALICE) == (250, b"")
    queued_before = sorted(os.listdir(var / "queue" / "env"))
    assert len(queued_before) == 1

    filler = var / "filler"
    fill(filler)
    code, text = send(gateway, message(4), [ALICE])
    assert (code, text[:5]) == (452, b"4.3.1"), text
    code, text = send(gateway, message(91), [CAROL], sender=ALICE)
    assert (code, text[:5]) == (452, b"4.3.1"), text
    code, text = send(gateway, message(5), [ALICE, CAROL], sender=ALICE)
    assert (code, text[:5]) == (452, b"4.3.1"), text

    stored_intact(gateway, accepted)
    assert sorted(os.listdir(var / "queue" / "env")) == queued_before
    assert not list(gateway.root.glob("var/mail/*/*/tmp/*")), "a failed write left its file in tmp/"

    filler.unlink()
    assert send(gateway, message(6), [ALICE]) == (250, b"")
    accepted[6] = message(6)
    stored_intact(gateway, accepted)
    assert send(gateway, message(92), [CAROL], sender=ALICE) == (250, b"")
    assert len(os.listdir(var / "queue" / "env")) == 2
    assert gateway.process is not None and gateway.process.poll() is None
    assert gateway.stop() == -signal.SIGTERM


def test_message_larger_than_the_free_space_is_refused_without_leaking_it(small_disk_gateway: Gateway) -> None:
    """A 1 MB message with ~300 KB free: 452 4.3.1, the partial copy in the Maildir's
    tmp/ is removed, and the space it took is free again: small mail still goes through."""
    gateway = small_disk_gateway
    var = gateway.root / "var"
    assert send(gateway, message(1), [ALICE]) == (250, b"")
    fill(var / "filler", leave_octets=300_000)
    free_before = os.statvfs(var).f_bavail
    code, text = send(gateway, message(2, body_octets=1_000_000), [ALICE])
    assert (code, text[:5]) == (452, b"4.3.1"), text
    assert not list(gateway.root.glob("var/mail/*/*/tmp/*"))
    assert os.statvfs(var).f_bavail == free_before  # nothing half-written was kept
    assert send(gateway, message(3), [ALICE]) == (250, b"")
    stored_intact(gateway, {1: message(1), 3: message(3)})


def test_queued_message_larger_than_the_free_space_is_refused_without_leaking_it(
    small_disk_gateway: Gateway,
) -> None:
    """The same for relayed mail: 452 4.3.1, nothing left in the queue's tmp/, the space
    free again, and a small relayed message accepted right after."""
    gateway = small_disk_gateway
    var = gateway.root / "var"
    fill(var / "filler", leave_octets=300_000)
    free_before = os.statvfs(var).f_bavail
    code, text = send(gateway, message(1, body_octets=1_000_000), [CAROL], sender=ALICE)
    assert (code, text[:5]) == (452, b"4.3.1"), text
    assert [p.name for p in (var / "queue" / "tmp").iterdir()] == []
    assert os.statvfs(var).f_bavail == free_before
    assert send(gateway, message(2), [CAROL], sender=ALICE) == (250, b"")


def queue_attempts(gateway: Gateway) -> list[int]:
    env = gateway.root / "var" / "queue" / "env"
    return [json.loads(path.read_bytes())["attempts"] for path in env.iterdir()]


def flush(gateway: Gateway) -> None:
    subprocess.run([str(BIN / "mailgate"), "--config", str(gateway.config), "queue", "flush"],
                   cwd=gateway.root, check=True, capture_output=True, timeout=60)


def test_queue_state_is_saved_again_once_space_returns(small_disk_gateway: Gateway) -> None:
    """An attempt whose state cannot be saved (disk full) must not stop the next
    attempt, with space back, from saving its state (a leftover tmp/<id>.env once
    made every later save fail on O_EXCL until a restart).

    The unsaved attempt is not counted: the next one reloads the entry from disk."""
    gateway = small_disk_gateway
    var = gateway.root / "var"
    assert send(gateway, message(1), [CAROL], sender=ALICE) == (250, b"")
    wait_for(lambda: queue_attempts(gateway) == [1], 20, "the first attempt to be recorded")
    filler = var / "filler"
    fill(filler)
    flush(gateway)
    wait_for(lambda: gateway.log().count("crashed; retrying later") == 1, 20, "the attempt on a full disk")
    filler.unlink()
    flush(gateway)
    wait_for(lambda: queue_attempts(gateway) != [1] or gateway.log().count("crashed; retrying later") == 2,
             20, "the next attempt to be saved, or to crash")
    assert queue_attempts(gateway) == [2]
    assert [p.name for p in (var / "queue" / "tmp").iterdir()] == []


# --- a thousand idle connections -----------------------------------------------------------


@pytest.fixture
def enough_descriptors() -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE of this process, which the twistd child inherits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_SESSIONS * 2 + FD_HEADROOM  # ours and the gateway's, with margin
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise hard
            except (ValueError, OSError):
                pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted} and cannot be raised")
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def test_thousand_idle_connections(make_gateway, enough_descriptors: None) -> None:
    """1000 sessions each get their 220 and sit idle; a 1001st delivers mail;
    all of them QUIT cleanly and the gateway's descriptors go back down."""
    gateway = make_gateway(("smtp",), extra=config_extra(max_connections=IDLE_SESSIONS * 2))
    gateway.add_user(ALICE)
    gateway.start()
    pid = gateway.process.pid
    assert nofile_limit(pid) >= IDLE_SESSIONS + FD_HEADROOM
    baseline_fds = open_fds(pid)
    idle: list[tuple[socket.socket, object]] = []
    try:
        for _ in range(IDLE_SESSIONS):  # one at a time: the listen backlog is never the limit
            sock = socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=30)
            reader = sock.makefile("rb")
            idle.append((sock, reader))
            assert reader.readline().startswith(b"220 "), f"session {len(idle)} had no greeting"
        assert open_fds(pid) >= IDLE_SESSIONS  # one socket per session, held by the gateway

        assert send(gateway, message(1), [ALICE]) == (250, b"")
        assert len(gateway.new_messages(ALICE)) == 1

        for sock, reader in idle:
            sock.sendall(b"QUIT\r\n")
        for index, (sock, reader) in enumerate(idle):
            assert reader.readline().startswith(b"221 "), f"session {index} did not say goodbye"
            assert reader.readline() == b"", f"session {index} was not closed by the server"
    finally:
        for sock, reader in idle:
            reader.close()
            sock.close()
    wait_for(lambda: open_fds(pid) <= baseline_fds + 5, 30, "the gateway to close the sessions' descriptors")
    assert send(gateway, message(2), [ALICE]) == (250, b"")
    log = gateway.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    assert gateway.stop() == -signal.SIGTERM
