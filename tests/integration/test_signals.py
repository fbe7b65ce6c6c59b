"""Signals a real `twistd mailgate` gets from operators and init systems."""

from __future__ import annotations

import os
import signal
import smtplib
import time

from tests.support.gateway import wait_for

RELOAD_LINE = " applied: generation "


def test_sighup_never_stops_the_server(make_gateway) -> None:
    """Issue #12: SIGHUP killed the server, without even a shutdown line in the log; now it reloads."""
    gateway = make_gateway().start()
    assert gateway.process is not None
    pid = gateway.process.pid
    for count in (1, 2):
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda n=count: gateway.log().count(RELOAD_LINE) == n, 10, f"reload line {count}")
    time.sleep(0.2)  # a dying process would be gone by now
    assert gateway.process.poll() is None
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        assert client.ehlo()[0] == 250
    assert gateway.process.pid == pid and os.path.exists(f"/proc/{pid}")
    assert gateway.stop() == -signal.SIGTERM  # the way twistd ends on SIGTERM (SPEC)
    assert "mailgate stopped cleanly" in gateway.log()
