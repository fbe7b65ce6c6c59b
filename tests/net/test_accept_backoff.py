"""Accepting under EMFILE: the port pauses (0.1 s doubling to 5 s) instead of spinning.

Unit tests drive a fake port on a Clock; the last test runs a real
tcp.Port in a child process whose descriptors are all taken and whose
Twisted EMFILE reserve is gone (as when a thread took its slot): Twisted
alone then calls accept() tens of thousands of times a second.
"""

from __future__ import annotations

import errno
import os
import time

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mailgate.net.accept_backoff import LONGEST_PAUSE_SECONDS, pause_on_exhaustion
from tests.support.descriptors import out_of_descriptors


class FakeListening:
    def __init__(self) -> None:
        self.errors: list[int] = []  # errno of each accept() to fail, in turn

    def accept(self) -> tuple[object, tuple[str, int]]:
        if self.errors:
            raise OSError(self.errors.pop(0), os.strerror(errno.EMFILE))
        raise BlockingIOError(errno.EAGAIN, "nothing waiting")

    def fileno(self) -> int:
        return 7


class FakePort:
    """As tcp.Port: doRead accepts until an error and swallows it (Twisted logs it)."""

    connected = True
    disconnecting = False

    def __init__(self) -> None:
        self.socket = FakeListening()
        self.reading = True
        self.reads = 0

    def doRead(self) -> None:
        self.reads += 1
        try:
            self.socket.accept()
        except OSError:
            return

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class BackoffTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.port = Clock(), FakePort()
        self.listening = self.port.socket
        backoff = pause_on_exhaustion(self.port, self.clock, "pop3")
        assert backoff is not None
        self.backoff = backoff

    def test_emfile_pauses_reading_and_doubles_the_pause(self) -> None:
        self.listening.errors = [errno.EMFILE] * 8
        pauses = []
        with capturedLogs() as events:
            for _ in range(8):
                self.port.doRead()
                self.assertFalse(self.port.reading)
                pauses.append(self.backoff.pause_seconds)
                self.clock.advance(self.backoff.pause_seconds)
                self.assertTrue(self.port.reading)
            self.port.doRead()  # accepted, or nothing waiting: the shortage is over
        self.assertEqual(pauses, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, LONGEST_PAUSE_SECONDS, LONGEST_PAUSE_SECONDS])
        lines = [formatEvent(event) for event in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0], "listen pop3: cannot accept: Too many open files; pausing accepts, at most 5 s"
                                   " at a time")
        self.assertEqual(lines[1], "listen pop3: accepting again, after 16.3 s short of descriptors")
        self.assertEqual(self.backoff.pause_seconds, 0.0)

    def test_other_resource_errors_pause_too(self) -> None:
        for error in (errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.listening.errors = [error]
            self.port.doRead()
            self.assertFalse(self.port.reading, error)
            self.clock.advance(LONGEST_PAUSE_SECONDS)

    def test_other_accept_errors_do_not_pause(self) -> None:
        self.listening.errors = [errno.ECONNABORTED]
        self.port.doRead()
        self.assertTrue(self.port.reading)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_port_closed_during_a_pause_is_not_read_again(self) -> None:
        self.listening.errors = [errno.EMFILE]
        self.port.doRead()
        self.port.connected = False
        self.clock.advance(1)
        self.assertFalse(self.port.reading)

    def test_stop_drops_the_pending_resume(self) -> None:
        self.listening.errors = [errno.EMFILE]
        self.port.doRead()
        self.backoff.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_socket_is_seen_through(self) -> None:
        self.assertEqual(self.port.socket.fileno(), 7)


def test_a_port_out_of_descriptors_pauses_instead_of_spinning() -> None:
    """Real sockets: without the backoff the port tries accept() in a busy loop (thousands
    of times); with it, a handful of times in 1.5 s, and the connection that waited in
    the backlog is served once descriptors are free."""
    started = time.monotonic()
    reads, cpu, got = out_of_descriptors("backoff")
    assert got == b"hello"
    assert reads <= 10, reads  # 0.1 + 0.2 + 0.4 + 0.8 s: five tries
    assert cpu < 0.5, cpu
    assert time.monotonic() - started < 20


def test_without_the_backoff_twisted_spins() -> None:
    """What the backoff is for (if Twisted learns to pause, this fails and can go)."""
    reads, _cpu, _got = out_of_descriptors("twisted")
    assert reads > 1000, reads
