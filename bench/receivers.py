#!/usr/bin/env python3
"""The far ends of the relay and webhook cells, each run as its own process.

    python bench/receivers.py http --port P     an HTTP receiver: every POST gets 204 at once;
                                                GET /count answers how many POSTs it has had
    python bench/receivers.py smtp --port P     an SMTP sink for when Postfix's smtp-sink is
                                                missing: 250 to everything, 354 to DATA, and
                                                "mesg=N" on stdout after each message, as
                                                `smtp-sink -c` prints it

Both bind 127.0.0.1 only and print "ready" on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.value += 1


POSTS = Counter()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: mailgate pools its connections

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        POSTS.add()
        self.send_response_only(204)
        self.end_headers()

    def do_GET(self) -> None:
        body = str(POSTS.value).encode()
        self.send_response_only(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen()'s backlog, given in the constructor: the default 5 drops
    # connections when mailgate opens its pool's at once (the sender then waits out its time limit)


def http(port: int) -> None:
    server = Server(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


async def smtp_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: list[int]) -> None:
    writer.write(b"220 sink ESMTP\r\n")
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line[:4].upper()
        if verb in (b"EHLO",):
            writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
        elif verb == b"DATA":
            writer.write(b"354 go ahead\r\n")
            await writer.drain()
            while True:
                data = await reader.readline()
                if not data or data == b".\r\n":
                    break
            counts[0] += 1
            writer.write(b"250 2.0.0 Ok\r\n")
            sys.stdout.write(f"mesg={counts[0]}\r")
            sys.stdout.flush()
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"250 Ok\r\n")
        await writer.drain()
    writer.close()


async def smtp(port: int) -> None:
    counts = [0]
    server = await asyncio.start_server(lambda r, w: smtp_session(r, w, counts), "127.0.0.1", port, backlog=128)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["http", "smtp"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "http":
        http(args.port)
    else:
        asyncio.run(smtp(args.port))


if __name__ == "__main__":
    main()
