"""Running a process out of file descriptors: many connections, and a port whose accepts fail.

Shared by tests/net/test_accept_backoff.py, tests/integration/test_descriptors.py
and bench/emfile.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

# A tcp.Port in a child whose descriptors are all taken and whose Twisted EMFILE
# reserve is gone (as when a thread took its slot); argv[1] "backoff" installs
# mailgate's pause. It prints its port, then after 1.5 s the port's accept
# attempts and CPU seconds, frees its descriptors and greets the one client.
CHILD = textwrap.dedent("""
    import os, resource, sys, time
    from twisted.internet import reactor, tcp
    from twisted.internet.protocol import Factory, Protocol
    from mailgate.net.accept_backoff import pause_on_exhaustion

    class Hello(Protocol):
        def connectionMade(self):
            self.transport.write(b"hello")
            reactor.callLater(0.2, reactor.stop)

    def start():
        port = reactor.listenTCP(0, Factory.forProtocol(Hello), interface="127.0.0.1")
        real, counted = port.doRead, [0]
        def read():
            counted[0] += 1
            return real()
        port.doRead = read
        if sys.argv[1] == "backoff":
            pause_on_exhaustion(port, reactor, "test")
        tcp._reservedFD._fileDescriptor.close()
        tcp._reservedFD._fileDescriptor = None
        hog = []
        while True:
            try:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        print(port.getHost().port, flush=True)
        started = time.process_time()

        def release():
            print(counted[0], round(time.process_time() - started, 2), flush=True)
            for fd in hog:
                os.close(fd)
        reactor.callLater(1.5, release)

    resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
    reactor.callWhenRunning(start)
    reactor.callLater(30, reactor.stop)
    reactor.run()
""")


def out_of_descriptors(mode: str) -> tuple[int, float, bytes]:
    """(accept attempts in 1.5 s out of descriptors, CPU seconds, what the client got after);
    `mode` "backoff" with mailgate's pause, anything else Twisted alone."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        client = socket.create_connection(("127.0.0.1", port), timeout=10)  # the kernel's backlog takes it
        reads, cpu = child.stdout.readline().split()
        client.settimeout(10)
        try:
            got = client.recv(5)
        except OSError:
            got = b""
        client.close()
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return int(reads), float(cpu), got


def connect_many(port: int, count: int) -> list[socket.socket]:
    """Up to `count` connections, until three in a row go unanswered (the backlog is full)."""
    opened: list[socket.socket] = []
    unanswered = 0
    while len(opened) < count and unanswered < 3:
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            unanswered = 0
        except OSError:
            unanswered += 1
    return opened
