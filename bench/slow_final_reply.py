"""How many copies an MX gets when it answers the final dot after N seconds (issue #12, item 3).

Not a benchmark of speed: a simulation of the real Scheduler and SMTPTransport
on a MemoryReactorClock, so an hour passes in a second. One message is
queued for one recipient; the fake MX (StringTransport, scripted) answers
everything at once except the dot, which it answers `--delay` seconds later.
Retries follow `--retry` seconds. It prints the copies the MX received and
what the queue holds at the end.

    .venv/bin/python bench/slow_final_reply.py                 # 330 s, one simulated hour
    .venv/bin/python bench/slow_final_reply.py --delay 700     # past the RFC's 10 minutes
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection

from mailgate.core.route import Route
from mailgate.core.session import Envelope
from mailgate.outbound.bounces import BounceSender
from mailgate.outbound.retry import RetryPolicy
from mailgate.outbound.scheduler import Scheduler
from mailgate.outbound.smtp_transport import SCHEMES, SMTPTransport
from mailgate.outbound.spool import QueueStore
from mailgate.outbound.spooler import Spooler
from mailgate.outbound.transport import HookTransport
from mailgate.store.maildir_writer import StoredMessage

BODY = b"Subject: slow\n\nhello\n"


class OneAddress:
    async def addresses(self, host: str) -> list[str]:
        return ["192.0.2.25"]


class SlowMX:
    """One scripted server connection: prompt replies, the dot's reply after `delay` seconds."""

    def __init__(self, reactor: MemoryReactorClock, delay: float, copies: list[float]) -> None:
        host, port, factory, *_ = reactor.tcpClients[-1]
        self.reactor, self.delay, self.copies = reactor, delay, copies
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransportWithDisconnection()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self.say("220 mx.remote.test ESMTP")

    def say(self, *lines: str) -> None:
        if self.transport.connected:
            self.protocol.dataReceived(b"".join(line.encode() + b"\r\n" for line in lines))

    def step(self) -> None:
        """Answer what the client wrote since the last step."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        heard = self.transport.value().decode()
        self.transport.clear()
        if heard.startswith("EHLO"):
            self.say("250-mx.remote.test", "250 PIPELINING")
        elif heard.startswith("MAIL"):
            self.say("250 2.1.0 ok", "250 2.1.5 ok", "354 go ahead")
            self.step()  # the body follows at once
        elif heard.endswith("\r\n.\r\n"):
            self.copies.append(self.reactor.seconds())
            self.reactor.callLater(self.delay, self.say, "250 2.0.0 queued")
        elif heard.startswith("QUIT"):
            self.say("221 2.0.0 bye")


def simulate(spool: str, delay: float, retry: float, hours: float) -> tuple[list[float], Any]:
    reactor = MemoryReactorClock()
    store = QueueStore(spool)
    run = lambda f, *a: succeed(f(*a))  # noqa: E731 - the disk, without threads
    spooler = Spooler(store, run, reactor.seconds)

    async def no_bounce(*args: Any) -> None:
        return None

    bounces = BounceSender("gw.example.test", hours * 7200, store.message_path, run, no_bounce)
    relay = SMTPTransport(reactor, helo_name="gw.example.test", tls_mode="none",
                          resolver=OneAddress())  # type: ignore[arg-type]
    scheduler = Scheduler(spooler, {scheme: relay for scheme in SCHEMES}, HookTransport(None, run),
                          bounces, RetryPolicy((retry,), hours * 7200), reactor, run)
    Deferred.fromCoroutine(scheduler.start())
    header = b"Received: by gw.example.test (mailgate) id Q1;\n\tdate\n"
    message = StoredMessage.build(header, [BODY], len(BODY), BODY.count(b"\n"))
    envelope = Envelope(mail_from="alice@example.test", rcpt_to=["bob@remote.test"])
    Deferred.fromCoroutine(spooler.add([("Q1", envelope, [("bob@remote.test", Route("smtp:mx.remote.test:25"))],
                                         message)]))
    spooler.release(["Q1"])
    copies: list[float] = []
    servers: list[SlowMX] = []
    for _ in range(int(hours * 3600)):
        reactor.advance(0)
        while len(servers) < len(reactor.tcpClients):
            servers.append(SlowMX(reactor, delay, copies))
        for server in servers:
            server.step()
        reactor.advance(1)
    entry = store.load("Q1")
    for server in servers:  # end the attempt in flight, if any, before the loop is dropped
        server.transport.loseConnection()
    reactor.advance(0)
    return copies, entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=330.0, help="seconds before the dot is answered")
    parser.add_argument("--retry", type=float, default=60.0, help="seconds between attempts")
    parser.add_argument("--hours", type=float, default=1.0, help="simulated time")
    args = parser.parse_args()
    spool = tempfile.mkdtemp(prefix="mailgate-slow-dot-")
    try:
        copies, entry = simulate(spool, args.delay, args.retry, args.hours)
    finally:
        shutil.rmtree(spool, True)
    print(f"final reply after {args.delay:g} s, retries every {args.retry:g} s, {args.hours:g} h simulated:")
    print(f"  copies received by the MX: {len(copies)} (at {', '.join(f'{t:.0f}' for t in copies)} s)")
    if entry is None:
        print("  queue: empty (delivered)")
    else:
        print(f"  queue: still queued after {entry.attempts} attempt(s); last_error: {entry.last_error}")


if __name__ == "__main__":
    main()
