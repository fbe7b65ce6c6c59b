"""A real SMTP listener on 127.0.0.1 and a real client through STARTTLS: the replies on both sides of it.

Before the handshake, mailgate.net.write_through sends replies straight to
the socket; after it, the connection is TLS and every reply must go through
Twisted's TLS layer instead. A reply sent around it would reach the client
in the clear, in the middle of the TLS stream, and break it.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mailgate.accounts import users_file as users
from mailgate.net.tls import ensure_certificate, server_tls_options
from tests.support.smtp_session import ALICE, HOSTNAME, Server

EHLO_IN_THE_CLEAR = (
    f"250-{HOSTNAME}\r\n250-PIPELINING\r\n250-SIZE 25000000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
    "250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n250-STARTTLS\r\n250 HELP\r\n"
).encode()
EHLO_OVER_TLS = (
    f"250-{HOSTNAME}\r\n250-PIPELINING\r\n250-SIZE 25000000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
    "250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n250-AUTH PLAIN LOGIN\r\n250 HELP\r\n"
).encode()
LAST_LINE = re.compile(rb"\d{3}(?: |$)")  # "250 Ok", not "250-PIPELINING"


def read_replies(sock: socket.socket, count: int) -> bytes:
    """Exactly what the server sent up to the end of its `count`-th reply, and not a byte more."""
    data = b""
    while sum(1 for line in data.split(b"\r\n")[:-1] if LAST_LINE.match(line)) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class STARTTLSLoopbackTests(TestCase):
    """A blocking client in a thread; the listener on the real reactor."""

    def setUp(self) -> None:
        self.patch(users, "BCRYPT_ROUNDS", 4)
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory, True)
        (directory / "tls").mkdir()  # ensure_certificate makes files, never directories
        self.cert, key = str(directory / "tls" / "cert.pem"), str(directory / "tls" / "key.pem")
        ensure_certificate(self.cert, key, HOSTNAME)
        self.server = Server(directory, tls_options=server_tls_options(self.cert, key), auth=True)

    def test_replies_before_and_after_starttls_arrive_intact_and_in_order(self) -> Deferred[None]:
        async def run() -> None:
            port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.server.factory)
            self.addCleanup(port.stopListening)
            clear, secure = await deferToThread(self.converse, port.getHost().port)
            self.assertEqual(clear, [
                f"220 {HOSTNAME} ESMTP mailgate\r\n".encode(),
                EHLO_IN_THE_CLEAR + b"250 2.0.0 Ok\r\n220 2.0.0 Ready to start TLS\r\n",
            ])
            self.assertEqual(secure[:2], [
                EHLO_OVER_TLS,
                (b"235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                 b"354 End data with <CR><LF>.<CR><LF>\r\n"),
            ])
            self.assertRegex(secure[2], rb"\A250 2\.0\.0 Ok: queued as [0-9A-F]+\r\n250 2\.0\.0 Ok\r\n221 2\.0\.0 Bye\r\n\Z")
            [(envelope, stored)] = self.server.deliverer.calls
            self.assertEqual((envelope.mail_from, envelope.rcpt_to), (ALICE, [ALICE]))
            self.assertIn(b" with ESMTPSA id ", stored)
            for _ in range(500):  # the server's side of the connection ends too, before trial looks
                if not self.server.factory.sessions:
                    break
                await deferLater(reactor, 0.01)
            self.assertEqual(self.server.factory.sessions, set())

        return Deferred.fromCoroutine(run())

    def converse(self, port: int) -> tuple[list[bytes], list[bytes]]:
        """Pipelined commands in the clear, STARTTLS, pipelined commands over TLS; what came back to each."""
        context = ssl.create_default_context(cafile=self.cert)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            clear = [read_replies(raw, 1)]
            raw.sendall(b"EHLO client.test\r\nNOOP\r\nSTARTTLS\r\n")
            clear.append(read_replies(raw, 3))
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"EHLO client.test\r\n")
                secure = [read_replies(tls, 1)]
                login = base64.b64encode(f"\0{ALICE}\0secret".encode())
                tls.sendall(b"AUTH PLAIN " + login + b"\r\nMAIL FROM:<alice@example.test>\r\n"
                            b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
                secure.append(read_replies(tls, 4))
                tls.sendall(b"Subject: over TLS\r\n\r\nhello\r\n.\r\nNOOP\r\nQUIT\r\n")
                secure.append(read_replies(tls, 3))
        return clear, secure
