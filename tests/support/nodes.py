"""Several gateways in one test (nodes, workers): killed at the end, and the message each is sent."""

from __future__ import annotations

import smtplib
from typing import Iterable

from tests.support.gateway import Gateway


def kill_running(gateways: Iterable[Gateway]) -> None:
    """SIGKILL every gateway still running, and reap it."""
    for gateway in gateways:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


def send_authenticated(gateway: Gateway, address: str, password: str = "secret") -> int:
    """One message from `address` to itself, logged in as it; the MAIL FROM or final reply code."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.login(address, password)
        try:
            client.sendmail(address, [address], b"Subject: rate\r\n\r\nrate\r\n")
        except smtplib.SMTPSenderRefused as error:
            return error.smtp_code
        return 250
