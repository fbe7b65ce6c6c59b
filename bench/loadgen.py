#!/usr/bin/env python3
"""A small asyncio SMTP load client: the harness's second load generator.

Used where Postfix's `smtp-source` cannot go, and in its place when it is
not installed (the test suite's smoke run):

* several messages per connection, with or without command pipelining
  (RFC 2920): `smtp-source` has "No SMTP command pipelining support"
  (its man page, BUGS), and its `-d` keeps one connection for *all* of a
  session's messages, not a fixed number;
* otherwise what `smtp-source -s C -m N -l SIZE -r R` does: C sessions in
  parallel, N messages in all, SIZE bytes of payload after the headers, R
  recipients named as smtp-source names them (`to`, then `2to` ... `Rto`).

Pipelined, a connection costs two round trips for EHLO, then one per
message: the message content, its final "." and the next MAIL, RCPTs and
DATA go in one write (RFC 2920 allows the content to open a group and DATA
to close it), and the last message's "." travels with QUIT.

Prints one JSON line: messages sent, failures, connections, seconds.

    python bench/loadgen.py --port 2525 -n 2000 -c 10 --size 1024 --per-connection 10 --pipelining
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def recipients(to: str, count: int) -> list[str]:
    """smtp-source's names for -r COUNT: "to", "2to", ..., "COUNTto"."""
    return [to] + [f"{index}{to}" for index in range(2, count + 1)]


FIXED: bytes | None = None  # --message FILE: these bytes (CRLF, dot-stuffed) for every message instead


def message(sender: str, rcpts: list[str], size: int, index: int) -> bytes:
    """Headers like smtp-source's, then `size` bytes of 78-byte lines; dot-stuffed, with the final dot."""
    if FIXED is not None:
        return FIXED
    header = (
        f"From: <{sender}>\r\nTo: <{rcpts[0]}>\r\nSubject: bench {index}\r\n"
        f"Message-Id: <{time.time_ns()}.{index}@client.test>\r\n\r\n"
    ).encode()
    line = b"La La La La La La La La La La La La La La La La La La La La La La La La La\r\n"
    full, rest = divmod(size, len(line))
    body = line * full + (line[: max(0, rest - 2)] + b"\r\n" if rest > 2 else b"")
    return header + body + b".\r\n"


class Failed(Exception):
    pass


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise Failed("connection closed")
            lines.append(line.decode("latin-1").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        try:
            return int(lines[-1][:3]), "\n".join(lines)
        except ValueError:
            raise Failed(f"bad reply {lines!r}") from None

    async def expect(self, *codes: int) -> str:
        code, text = await self.reply()
        if code not in codes:
            raise Failed(text)
        return text


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.left = args.n
        self.sent = 0
        self.failed = 0
        self.connections = 0
        self.errors: list[str] = []
        self.rcpts = recipients(args.to, args.rcpts)

    def take(self) -> int | None:
        if self.left <= 0:
            return None
        self.left -= 1
        return self.args.n - self.left

    def envelope(self) -> bytes:
        commands = [f"MAIL FROM:<{self.args.sender}>\r\n"] + [f"RCPT TO:<{r}>\r\n" for r in self.rcpts]
        return "".join(commands).encode()

    async def worker(self) -> None:
        while self.left > 0:
            try:
                await self.connection()
            except (Failed, OSError) as error:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(str(error)[:200])

    async def connection(self) -> None:
        args = self.args
        reader, writer = await asyncio.open_connection(args.host, args.port)
        self.connections += 1
        session = Session(reader, writer)
        try:
            await session.expect(220)
            writer.write(f"EHLO {args.helo}\r\n".encode())
            features = await session.expect(250)
            if args.pipelining and "PIPELINING" not in features.upper():
                raise Failed("the server does not offer PIPELINING")
            if args.pipelining:
                await self.pipelined(session)
            else:
                await self.serial(session)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def serial(self, session: Session) -> None:
        """One command, one reply, as smtp-source does it."""
        args, writer = self.args, session.writer
        for _ in range(args.per_connection):
            index = self.take()
            if index is None:
                break
            writer.write(f"MAIL FROM:<{args.sender}>\r\n".encode())
            await session.expect(250)
            for rcpt in self.rcpts:
                writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
                await session.expect(250, 251)
            writer.write(b"DATA\r\n")
            await session.expect(354)
            writer.write(message(args.sender, self.rcpts, args.size, index))
            await session.expect(250)
            self.sent += 1
        writer.write(b"QUIT\r\n")
        await session.expect(221)

    async def pipelined(self, session: Session) -> None:
        """MAIL + RCPTs + DATA in one write; content + "." + the next group in the next."""
        args, writer = self.args, session.writer
        index = self.take()
        if index is None:
            writer.write(b"QUIT\r\n")
            await session.expect(221)
            return
        writer.write(self.envelope() + b"DATA\r\n")
        for count in range(args.per_connection):
            await session.expect(250)
            for _ in self.rcpts:
                await session.expect(250, 251)
            await session.expect(354)
            body = message(args.sender, self.rcpts, args.size, index)
            index = self.take() if count + 1 < args.per_connection else None
            if index is None:
                writer.write(body + b"QUIT\r\n")
                await session.expect(250)
                self.sent += 1
                await session.expect(221)
                return
            writer.write(body + self.envelope() + b"DATA\r\n")
            await session.expect(250)
            self.sent += 1


async def run(args: argparse.Namespace) -> dict:
    load = Load(args)
    start = time.perf_counter()
    await asyncio.gather(*(load.worker() for _ in range(args.c)))
    seconds = time.perf_counter() - start
    return {"n": args.n, "sent": load.sent, "failed": load.failed, "connections": load.connections,
            "seconds": round(seconds, 3), "msgs_per_s": round(load.sent / seconds, 1) if seconds else None,
            "errors": load.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", type=int, default=100, help="messages in all")
    parser.add_argument("-c", type=int, default=1, help="sessions in parallel")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes after the headers")
    parser.add_argument("--rcpts", type=int, default=1, help="recipients per message (smtp-source -r)")
    parser.add_argument("--per-connection", type=int, default=1, help="messages per connection")
    parser.add_argument("--pipelining", action="store_true", help="pipeline commands (RFC 2920)")
    parser.add_argument("--sender", default="bench@client.test")
    parser.add_argument("--to", default="benchuser@example.test")
    parser.add_argument("--helo", default="client.test")
    parser.add_argument("--message", help="send this file (a whole message) every time, instead of a generated one")
    args = parser.parse_args()
    if args.message:
        global FIXED
        with open(args.message, "rb") as handle:
            raw = handle.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        FIXED = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in raw.split(b"\r\n"))
        FIXED = FIXED.removesuffix(b"\r\n") + b"\r\n.\r\n"
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["sent"] == args.n and not result["failed"] else 1)


if __name__ == "__main__":
    main()
