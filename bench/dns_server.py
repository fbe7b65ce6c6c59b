#!/usr/bin/env python3
"""The local DNS server of the mail-authentication cells: tests/support/fake_dns.py's, in a process of its own.

    python bench/dns_server.py ZONE.json     # {"name": {"TXT": [...], "A": [...], ...}}; prints "port N"

Run from the checkout (it imports tests.support); the harness sets PYTHONPATH.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor

from tests.support.fake_dns import FakeDNSServer


def main() -> None:
    with open(sys.argv[1]) as handle:
        zone = json.load(handle)
    server = FakeDNSServer(zone, reactor).start()
    print(f"port {server.port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
