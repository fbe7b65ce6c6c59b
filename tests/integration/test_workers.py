"""server.workers = 2 against real processes: the master, two workers, one listener shared by both."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from mailgate.core.queue_ids import part_of
from tests.support.gateway import BIN, Gateway, free_port, gateway_config, wait_for
from tests.support.nodes import send_authenticated

BOB = "bob@example.test"
ALICE = "alice@example.test"
NO_RATE = '[limits]\nconnection_rate = "off"\n'
T = TypeVar("T")


def with_workers(gateway: Gateway, workers: int = 2) -> Gateway:
    """The gateway's config with server.workers set (gateway_config writes [server] first)."""
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1))
    return gateway


def start_workers(gateway: Gateway, workers: int = 2) -> Gateway:
    gateway.start()
    wait_for(lambda: f"workers: all {workers} ready" in gateway.log(), 30, "every worker to start")
    return gateway


def worker_pids(gateway: Gateway) -> dict[int, int]:
    """index -> pid of the latest start of each worker, from the master's log."""
    return {int(index): int(pid) for index, pid in re.findall(r"workers: worker (\d+) started \(pid (\d+)\)",
                                                               gateway.log())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def send_batch(port: int, connection: int, count: int, sent: list[str], to: str = BOB) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for number in range(count):
            tag = f"c{connection}m{number}"
            client.sendmail("sender@remote.test", [to], f"Subject: {tag}\r\n\r\n{tag}\r\n".encode())
            sent.append(tag)


def subjects(gateway: Gateway, address: str = BOB) -> list[str]:
    found = []
    for path in gateway.new_messages(address):
        match = re.search(r"^Subject: (\S+)", path.read_text(), re.M)
        found.append(match.group(1) if match else "?")
    return found


def test_both_workers_serve_and_200_messages_over_20_connections_land_once(make_gateway: Callable[..., Gateway]) -> None:
    """20 connections at once, 10 messages each: 200 files, one per message; both workers delivered some."""
    gateway = with_workers(make_gateway(extra=NO_RATE))
    gateway.add_user(BOB)
    start_workers(gateway)
    sent: list[str] = []
    threads = [threading.Thread(target=send_batch, args=(gateway.ports["smtp"], n, 10, sent)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(sent) == 200
    while not served_by_both(gateway, "from=<sender@remote.test>"):  # the kernel chose one worker only
        assert len(sent) < 300, "one worker took every connection"
        send_batch(gateway.ports["smtp"], len(sent), 1, sent)
    wait_for(lambda: len(gateway.new_messages(BOB)) >= len(sent), 30, "every message in the Maildir")
    landed = subjects(gateway)
    assert sorted(landed) == sorted(sent)  # each once, none twice


def test_a_worker_killed_with_sigkill_is_replaced(make_gateway: Callable[..., Gateway]) -> None:
    """The master logs the death, starts the worker again, and mail still lands."""
    gateway = with_workers(make_gateway(extra=NO_RATE))
    gateway.add_user(BOB)
    start_workers(gateway)
    killed = worker_pids(gateway)[1]
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: worker_pids(gateway)[1] != killed, 30, "worker 1 to be started again")
    assert re.search(r"workers: worker 1 ended \(.*\) after [\d.]+ s: starting it again in", gateway.log())
    wait_for(lambda: alive(worker_pids(gateway)[1]), 10, "the new worker 1")
    sent: list[str] = []
    for connection in range(6):
        send_batch(gateway.ports["smtp"], connection, 1, sent)
    wait_for(lambda: len(gateway.new_messages(BOB)) == 6, 20, "6 messages")


def test_sigterm_stops_the_master_and_every_worker(make_gateway: Callable[..., Gateway]) -> None:
    gateway = with_workers(make_gateway())
    start_workers(gateway)
    pids = worker_pids(gateway)
    assert gateway.stop(signal.SIGTERM) == -signal.SIGTERM  # the way twistd ends on SIGTERM (SPEC)
    for pid in pids.values():
        wait_for(lambda: not alive(pid), 10, f"worker {pid} to end")
    log = gateway.log()
    assert log.count("mailgate stopped cleanly") == 3  # both workers, then the master
    assert "Traceback" not in log


def test_a_second_sigterm_while_stopping_is_no_error(make_gateway: Callable[..., Gateway]) -> None:
    """systemd's default KillMode signals every process of the unit: each worker hears SIGTERM from
    systemd and again from the master, and the master may hear it twice."""
    gateway = with_workers(make_gateway())
    start_workers(gateway)
    pids = worker_pids(gateway)
    assert gateway.process is not None
    for pid in (gateway.process.pid, *pids.values(), gateway.process.pid, *pids.values()):
        os.kill(pid, signal.SIGTERM)
    assert gateway.stop(signal.SIGTERM) == -signal.SIGTERM
    for pid in pids.values():
        wait_for(lambda: not alive(pid), 10, f"worker {pid} to end")
    log = gateway.log()
    assert log.count("mailgate stopped cleanly") == 3
    assert "Traceback" not in log and "ReactorNotRunning" not in log


def test_a_single_process_also_takes_a_second_sigterm_calmly(make_gateway: Callable[..., Gateway]) -> None:
    """The second SIGTERM comes while the first is carried out: a relay attempt to a smarthost that
    never greets keeps the stop waiting (its grace)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        gateway = make_gateway(extra=NO_RATE + (
            f'[relay]\nsmarthost = "127.0.0.1:{silent.getsockname()[1]}"\nallowed_networks = ["127.0.0.0/8"]\n'))
        gateway.start()
        assert gateway.process is not None
        send_batch(gateway.ports["smtp"], 0, 1, [], REMOTE)
        wait_for(lambda: "status=received" in gateway.log(), 10, "the message to be queued")
        os.kill(gateway.process.pid, signal.SIGTERM)
        wait_for(lambda: "mailgate stopping" in gateway.log(), 10, "the first SIGTERM to be heard")
        assert gateway.process.poll() is None  # waiting for the attempt in flight
        os.kill(gateway.process.pid, signal.SIGTERM)
        assert gateway.stop(signal.SIGTERM) == -signal.SIGTERM
    assert "mailgate stopped cleanly" in gateway.log()
    assert "Traceback" not in gateway.log() and "ReactorNotRunning" not in gateway.log()


def test_sighup_reaches_every_worker_and_stops_none(make_gateway: Callable[..., Gateway]) -> None:
    gateway = with_workers(make_gateway())
    start_workers(gateway)
    gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_for(lambda: gateway.log().count("SIGHUP") >= 2, 10, "both workers to hear SIGHUP")
    assert gateway.process.poll() is None  # type: ignore[union-attr]
    assert all(alive(pid) for pid in worker_pids(gateway).values())


def greeting(port: int, opened: list[socket.socket]) -> str:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    opened.append(sock)
    return sock.recv(512).decode(errors="replace")[:3]


def test_max_connections_per_ip_holds_across_workers(make_gateway: Callable[..., Gateway]) -> None:
    """max_connections_per_ip = 3 with two workers: of connections held open, exactly 3 are greeted,
    whichever workers took them; the others hear 421 from both workers."""
    gateway = with_workers(make_gateway(extra='[limits]\nconnection_rate = "off"\nmax_connections_per_ip = 3\n'))
    start_workers(gateway)
    opened: list[socket.socket] = []
    try:
        codes = until_both(gateway, "SMTP connection from 127.0.0.1 refused",
                           lambda: greeting(gateway.ports["smtp"], opened), minimum=8)
    finally:
        for sock in opened:
            sock.close()
    assert codes.count("220") == 3, codes
    assert codes.count("421") == len(codes) - 3, codes


def test_sender_rate_holds_across_workers(make_gateway: Callable[..., Gateway]) -> None:
    """sender_rate = "5/hour": of 10 messages over 10 connections (both workers), exactly 5 are accepted."""
    gateway = with_workers(make_gateway(
        extra='[limits]\nconnection_rate = "off"\nsender_rate = "5/hour"\n[security]\nplaintext_auth = "always"\n'))
    gateway.add_user(ALICE)
    start_workers(gateway)
    codes = until_both(gateway, "auth: SMTP from [127.0.0.1]: user=<alice@example.test>",
                       lambda: send_authenticated(gateway, ALICE), minimum=10)
    assert codes.count(250) == 5, codes
    assert codes.count(450) == len(codes) - 5, codes


def test_auth_failures_count_across_workers(make_gateway: Callable[..., Gateway]) -> None:
    """auth_failures_per_account = 2: after two wrong passwords, on whichever workers, every later
    attempt for the pair is refused unchecked (454), the right password too, on every worker."""
    gateway = with_workers(make_gateway(extra='[limits]\nconnection_rate = "off"\nauth_failures_per_account = 2\n'
                                               '[security]\nplaintext_auth = "always"\n'))
    gateway.add_user(ALICE)
    start_workers(gateway)
    for _ in range(2):
        with pytest.raises((smtplib.SMTPAuthenticationError, smtplib.SMTPServerDisconnected)):
            with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
                client.login(ALICE, "wrong")
    codes = until_both(gateway, "auth refused: ip=127.0.0.1", lambda: login_as_alice(gateway), minimum=4)
    assert codes == [454] * len(codes), codes


def login_as_alice(gateway: Gateway) -> int:
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        try:
            client.login(ALICE, "secret")
        except smtplib.SMTPAuthenticationError as error:
            return error.smtp_code
        return 235


def served_by_both(gateway: Gateway, text: str) -> bool:
    return min(served_times(gateway, text)) > 0


def served_times(gateway: Gateway, text: str) -> list[int]:
    """How many lines with `text` each worker has logged."""
    log = gateway.log()
    return [len(re.findall(rf"worker {index}: .*{re.escape(text)}", log)) for index in (0, 1)]


def until_both(gateway: Gateway, text: str, attempt: Callable[[], T], minimum: int, most: int = 80) -> list[T]:
    """attempt() at least `minimum` times, and on until both workers have logged `text` (the kernel
    chooses which worker accepts each connection: it takes a few tries for it to choose both)."""
    results = [attempt() for _ in range(minimum)]
    while not served_by_both(gateway, text):
        assert len(results) < most, f"{most} connections and one worker never logged {text!r}"
        results.append(attempt())
    return results


def test_queued_mail_of_killed_workers_is_delivered_once(make_gateway: Callable[..., Gateway],
                                                         tmp_path: Path) -> None:
    """Relay mail accepted by both workers waits (its smarthost is down); both workers are killed
    with SIGKILL; once they are back and the smarthost is up, each message arrives there once."""
    sink_port = free_port()
    gateway = with_workers(make_gateway(extra=NO_RATE + (
        f'[relay]\nsmarthost = "127.0.0.1:{sink_port}"\nallowed_networks = ["127.0.0.0/8"]\n'
        'retry_intervals = ["1s"]\n')))
    start_workers(gateway)
    sent: list[str] = []
    threads = [threading.Thread(target=send_batch, args=(gateway.ports["smtp"], n, 2, sent, REMOTE))
               for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    while not served_by_both(gateway, "from=<sender@remote.test>"):  # until the kernel chose both
        assert len(sent) < 100, "one worker took every connection"
        send_batch(gateway.ports["smtp"], len(sent), 1, sent, REMOTE)
    wait_for(lambda: served_by_both(gateway, ": attempt 1: 0 delivered"), 30, "each worker to try its part")
    for index, pid in worker_pids(gateway).items():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "workers: worker 1 ended" in gateway.log() and "workers: worker 0 ended" in gateway.log(), 20,
             "both deaths")
    sink = sink_gateway(tmp_path / "sink", sink_port).start()
    wait_for(lambda: len(sink.new_messages(REMOTE)) >= len(sent), 60, "every message at the smarthost")
    wait_for(lambda: not list((gateway.root / "var" / "queue" / "env").iterdir()), 30, "the queue to empty")
    assert sorted(subjects(sink, REMOTE)) == sorted(sent)
    sink.stop()


REMOTE = "bob@remote.test"


def sink_gateway(root: Path, port: int) -> Gateway:
    """A single-process mailgate taking mail for remote.test: the smarthost, real at both ends."""
    (root / "etc").mkdir(parents=True)
    config = gateway_config({"smtp": port}).replace('local = ["example.test"]', 'local = ["remote.test"]')
    (root / "mailgate.toml").write_text(config)
    sink = Gateway(root, root / "mailgate.toml", {"smtp": port})
    sink.add_user(REMOTE)
    return sink


def queue_cli(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mailgate"), "--config", str(gateway.config), "queue", *args],
                          cwd=gateway.root, capture_output=True, text=True, timeout=60)


def test_the_queue_cli_sees_and_acts_on_every_workers_mail(make_gateway: Callable[..., Gateway],
                                                           tmp_path: Path) -> None:
    """list shows what both workers queued; delete (of an entry in each worker's part) and flush are
    carried out by the running server."""
    sink_port = free_port()
    gateway = with_workers(make_gateway(extra=NO_RATE + (
        f'[relay]\nsmarthost = "127.0.0.1:{sink_port}"\nallowed_networks = ["127.0.0.0/8"]\n'
        'retry_intervals = ["1h"]\n')))
    start_workers(gateway)
    sent: list[str] = []
    while min(served_times(gateway, "status=received")) < 2:  # two in each worker's part
        assert len(sent) < 100, "one worker took every connection"
        send_batch(gateway.ports["smtp"], len(sent), 1, sent, REMOTE)
    wait_for(lambda: gateway.log().count("attempt 1:") >= len(sent), 30, "a first (failed) attempt of each")
    listed = [entry["id"] for entry in json.loads(queue_cli(gateway, "list", "--json").stdout)]
    assert len(listed) == len(sent)
    gone = [next(queue_id for queue_id in listed if part_of(queue_id, 2) == part) for part in (0, 1)]
    for queue_id in gone:
        deleted = queue_cli(gateway, "delete", queue_id)
        assert deleted.returncode == 0, deleted.stderr
    left = [entry["id"] for entry in json.loads(queue_cli(gateway, "list", "--json").stdout)]
    assert sorted(left) == sorted(set(listed) - set(gone))
    sink = sink_gateway(tmp_path / "sink", sink_port).start()
    flushed = queue_cli(gateway, "flush")
    assert "the running server is trying" in flushed.stdout, flushed
    wait_for(lambda: len(sink.new_messages(REMOTE)) >= len(sent) - 2, 60, "the rest at the smarthost")
    wait_for(lambda: json.loads(queue_cli(gateway, "list", "--json").stdout) == [], 30, "an empty queue")
    assert len(sink.new_messages(REMOTE)) == len(sent) - 2
    assert served_by_both(gateway, ": attempt 2: 1 delivered")  # each worker flushed its own part
    sink.stop()


def test_a_port_in_use_stops_the_master_with_one_line_naming_the_key(make_gateway: Callable[..., Gateway]) -> None:
    gateway = with_workers(make_gateway())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", gateway.ports["smtp"]))
        taken.listen()
        result = gateway.run_until_exit()
    assert result.returncode == 1
    assert "listen[0].endpoint: cannot listen on tcp:" in result.stderr + result.stdout
    assert "Traceback" not in gateway.log()
    assert "worker 0" not in gateway.log()  # no worker was started


def test_workers_1_is_the_single_process_it_always_was(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway()
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace("[server]\n", "[server]\nworkers = 1\n", 1))
    gateway.add_user(BOB)
    gateway.start()
    sent: list[str] = []
    send_batch(gateway.ports["smtp"], 0, 2, sent)
    wait_for(lambda: len(gateway.new_messages(BOB)) == 2, 10, "2 messages")
    assert gateway.process is not None
    children = Path(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children").read_text().split()
    assert children == []
    assert "workers:" not in gateway.log() and "worker 0:" not in gateway.log()


def test_workers_end_when_the_master_is_killed(make_gateway: Callable[..., Gateway]) -> None:
    """SIGKILL to the master (no clean stop at all): its workers notice the link is gone and stop."""
    gateway = with_workers(make_gateway())
    start_workers(gateway)
    pids = worker_pids(gateway)
    gateway.stop(signal.SIGKILL)
    for pid in pids.values():
        wait_for(lambda: not alive(pid), 20, f"worker {pid} to end")


def runnable_by_anyone(path: str) -> bool:
    """The interpreter and every directory above it are executable by others: a worker started
    after --uid can exec it (a venv under /root is not)."""
    real = Path(os.path.realpath(path))
    return all(part.stat().st_mode & 0o001 for part in [real, *real.parents])


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a port below 1024 and --uid need root")
@pytest.mark.skipif(not runnable_by_anyone(sys.executable), reason=f"{sys.executable} cannot be run after --uid")
def test_the_master_binds_a_low_port_as_root_and_the_workers_run_unprivileged(tmp_path: Path) -> None:
    import shutil
    import tempfile

    from tests.integration.test_privileges import NOBODY, free_privileged_port

    root = Path(tempfile.mkdtemp(prefix="mailgate-uid-workers-"))
    process = None
    try:
        root.chmod(0o755)
        os.chown(root, NOBODY, NOBODY)
        port = free_privileged_port()
        config = root / "mailgate.toml"
        config.write_text(
            '[server]\nhostname = "mx.example.test"\nworkers = 2\n[domains]\nlocal = ["example.test"]\n'
            f'[users]\nfile = "users"\n[[listen]]\nname = "mx"\nprotocol = "smtp"\n'
            f'endpoint = "tcp:{port}:interface=127.0.0.1"\n')
        subprocess.run([str(BIN / "mailgate"), "--config", str(config), "user", "add", BOB, "--password-stdin"],
                       input=b"pw\n", cwd=root, check=True, capture_output=True)
        os.chown(root / "users", NOBODY, NOBODY)
        log = root / "twistd.log"
        process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log), f"--uid={NOBODY}", f"--gid={NOBODY}",
             "mailgate", "--config", str(config)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: "workers: all 2 ready" in (log.read_text() if log.exists() else ""), 30, "start-up")
        assert "cannot start" not in log.read_text()
        pids = [int(pid) for pid in re.findall(r"workers: worker \d+ started \(pid (\d+)\)", log.read_text())]
        for pid in [process.pid, *pids]:
            assert int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]) == NOBODY
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("x@remote.test", [BOB], b"Subject: low\r\n\r\nhi\r\n")
        new = root / "var" / "mail" / "example.test" / "bob" / "new"
        wait_for(lambda: new.is_dir() and any(new.iterdir()), 10, "the message")
        assert all(path.stat().st_uid == NOBODY for path in new.iterdir())
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        shutil.rmtree(root, ignore_errors=True)
