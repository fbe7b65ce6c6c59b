"""A real `twistd mailgate` that runs out of file descriptors, and what is left working after.

The server starts under RLIMIT_NOFILE = 300 (preexec_fn, in the child). In
the issue 400 POP3 connections ran it out; now the descriptor reserve of
mailgate.limits.admission refuses connections long before that (see
test_dos.py), so here a plugin that leaks descriptors takes every free
one, as a buggy plugin or library could: accept() meets EMFILE, and so does
the once-a-second loop that serves `mailgate queue flush|delete` (it lists
the queue's control/ directory). That loop must outlive it with one log
line, and the listener must pause rather than spin; once the plugin has
given them back, `mailgate queue flush` is served again and new POP3
clients get their greeting.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess

from tests.support.descriptors import connect_many
from tests.support.gateway import BIN, Gateway, wait_for

NOFILE = 300
CONNECTIONS = 400
LOOP = "queue requests (mailgate queue flush|delete)"
NO_CONNECTION_LIMITS = """
[limits]
max_connections_per_ip = 100000
connection_rate = "off"
"""


def low_nofile() -> None:
    """In the child, before exec: this many descriptors at most."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


# EHLO hog.test: take every free descriptor; EHLO release.test: give them back.
HOG = '''
import os
from mailgate import hookimpl

HELD = []


@hookimpl
def mailgate_helo(session, name):
    if name == "hog.test":
        try:
            while True:
                HELD.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
    elif name == "release.test":
        while HELD:
            os.close(HELD.pop())
    return None
'''


def ehlo(client: socket.socket, name: str) -> None:
    client.sendall(f"EHLO {name}\r\n".encode())
    replies = b""
    while not any(line.startswith(b"250 ") for line in replies.split(b"\r\n")):
        chunk = client.recv(4096)
        assert chunk, replies
        replies += chunk


def descriptors(gateway: Gateway) -> int:
    assert gateway.process is not None
    return len(os.listdir(f"/proc/{gateway.process.pid}/fd"))


def test_cli_requests_are_served_again_after_descriptors_ran_out(make_gateway, tmp_path) -> None:
    plugins = tmp_path / "hog-plugins"
    plugins.mkdir()
    (plugins / "descriptor_hog.py").write_text(HOG)
    gateway = make_gateway(("smtp", "pop3"), extra=NO_CONNECTION_LIMITS
                           + f'[plugins]\npaths = ["{plugins}"]\nenable = ["descriptor_hog"]\n')
    gateway.start(preexec_fn=low_nofile)
    with socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=10) as session:
        assert session.recv(100).startswith(b"220 ")
        ehlo(session, "hog.test")
        clients = connect_many(gateway.ports["pop3"], 5)
        try:
            wait_for(lambda: descriptors(gateway) >= NOFILE - 1, 15, "the server to run out of descriptors")
            wait_for(lambda: f"{LOOP}: failed: OSError: [Errno 24]" in gateway.log(), 15,
                     "the request loop to meet EMFILE, and say so")
            wait_for(lambda: "listen pop3: cannot accept: Too many open files; pausing accepts" in gateway.log(), 15,
                     "the POP3 listener to pause")
        finally:
            for client in clients:
                client.close()
        ehlo(session, "release.test")
    wait_for(lambda: f"{LOOP}: working again after" in gateway.log(), 15, "the request loop to recover")

    flush = subprocess.run([str(BIN / "mailgate"), "--config", str(gateway.config), "queue", "flush"],
                           cwd=gateway.root, capture_output=True, text=True, timeout=60, check=False)
    assert (flush.returncode, flush.stdout) == (
        0, "queue flush: the running server is trying every queued message\n"), flush.stderr
    with socket.create_connection(("127.0.0.1", gateway.ports["pop3"]), timeout=10) as client:
        assert client.recv(100).startswith(b"+OK")

    log = gateway.log()
    assert log.count(f"{LOOP}: failed") == 1  # one line, not one a second
    assert "Unhandled error in Deferred" not in log
    assert 1 <= log.count("listen pop3: cannot accept") <= 2  # a shortage, perhaps two: never a line a try
