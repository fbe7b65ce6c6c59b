"""A scriptable fake remote SMTP server on a loopback address, for relay tests.

Usage from a twisted.trial TestCase (the reactor is running)::

    server = FakeSMTPServer(rcpt_replies={"bad@remote.test": "550 5.1.1 No such user"})
    port = await server.start("127.0.0.2")        # port 0 by default: the kernel picks
    self.addCleanup(server.stop)                  # closes the port and live sessions
    ... deliver ...
    [session] = server.sessions
    session.commands    # ["EHLO gw.test", "MAIL FROM:<a@b> SIZE=12", ...] (DATA body excluded)
    session.chunks      # raw bytes of every dataReceived, to check pipelined batches
    session.data        # raw bytes after the 354, still dot-stuffed, ending with the ".\\r\\n" line
    server.messages     # the raw DATA bytes of every completed transaction
    server.message_bodies()  # the same, un-dot-stuffed, without the final dot line

Knobs (attributes, changeable between sessions):

- greeting: reply sent on connect ("554 5.3.2 go away" for a refusing host).
- ehlo_reply: None for a normal EHLO answer, or e.g. "502 5.5.1 no EHLO" (HELO then works).
- pipelining, starttls, size, eight_bit: what EHLO advertises; STARTTLS needs
  `tls_options` (see `self_signed_tls_options`).
- mail_reply, rcpt_replies ({address: reply}, others get rcpt_default),
  data_reply (the reply to DATA itself, normally 354; with no accepted RCPT the
  server answers 554 instead, like a real one), final_reply (after the dot).
- stall_on: a verb ("CONNECT" for the greeting, "EHLO", "MAIL", "RCPT", "DATA",
  "." for the end of data) that gets no reply, nor does anything after it:
  the server goes silent, to test timeouts.
- drop_connections: accept and close at once, before any greeting.
- auth ({username: password}): AUTH `auth_mechanisms` ("PLAIN LOGIN") is offered, after TLS
  only when `auth_after_tls` (the default; before it AUTH gets 530 5.7.0);
  a wrong pair gets 535 5.7.8. The user that logged in is `session.auth_user`.
- implicit_tls: TLS from the first byte (start() listens with `tls_options`).
- final_delay: seconds before the reply to the final dot (a slow server).
- greeting_delay: seconds before the greeting.
- extensions: more EHLO keywords to advertise ("DSN", "SMTPUTF8"); their parameters are taken as sent.

Also recorded: `session.peer` (the client's address: a pool's source),
`session.helo`, and `server.most_at_once` (the most sessions open at one time).

For "nothing listens here", simply don't start a server on that address:
connections to a closed loopback port are refused at once.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from mailgate.net.tls import ensure_certificate, server_tls_options

END_OF_DATA = b"\r\n.\r\n"


def self_signed_tls_options(directory: str, hostname: str) -> tuple[Any, str]:
    """(server context factory, certificate path) for a self-signed `hostname` cert.

    The certificate path lets a test build a client trust root
    (`Certificate.loadPEM(open(path).read())`) for "verify" mode.
    """
    cert, key = os.path.join(directory, f"{hostname}.pem"), os.path.join(directory, f"{hostname}.key")
    ensure_certificate(cert, key, hostname)
    return server_tls_options(cert, key), cert


@dataclass
class Session:
    """What one client connection did."""

    commands: list[str] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    data: bytes = b""
    tls: bool = False
    peer: str = ""
    helo: str = ""
    auth_user: str | None = None
    auth_before_tls: bool = False  # an AUTH command arrived in plain text


class _FakeSMTPProtocol(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 100_000

    def __init__(self, server: FakeSMTPServer) -> None:
        self.server = server
        self.session = Session()
        self.stalled = False
        self._data = bytearray()
        self._accepted = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.server._live.append(self)
        self.server.most_at_once = max(self.server.most_at_once, len(self.server._live))
        self.server.sessions.append(self.session)
        self.session.peer = self.transport.getPeer().host
        self.session.tls = self.server.implicit_tls
        self._login: str | None = None  # AUTH LOGIN: "user" while waiting for it, then the name
        if self.server.drop_connections:
            self.transport.loseConnection()
            return
        if self.server.greeting_delay:
            self._later = self.server._reactor.callLater(self.server.greeting_delay, self._reply,
                                                         self.server.greeting, "CONNECT")
            return
        self._reply(self.server.greeting, "CONNECT")

    def connectionLost(self, reason: Any = None) -> None:
        later = getattr(self, "_later", None)
        if later is not None and later.active():
            later.cancel()
        if self in self.server._live:
            self.server._live.remove(self)
        self.lost.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.session.chunks.append(data)
        super().dataReceived(data)

    def _reply(self, reply: str, verb: str) -> None:
        if self.server.stall_on == verb:
            self.stalled = True  # from here on the client hears nothing
        if not self.stalled:
            self.sendLine(reply.encode())

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self.session.commands.append(text)
        if self._login is not None and not text.upper().startswith("AUTH"):
            self._login_step(text)
            return
        verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
        handler = getattr(self, f"do_{verb}", None)
        if handler is None:
            self._reply("500 5.5.1 unknown command", verb)
            return
        handler(text)

    def do_EHLO(self, text: str) -> None:
        s = self.server
        self.session.helo = text.partition(" ")[2]
        if s.ehlo_reply is not None:
            self._reply(s.ehlo_reply, "EHLO")
            return
        lines = [s.hostname]
        lines += ["PIPELINING"] if s.pipelining else []
        lines += [f"SIZE {s.size}"] if s.size is not None else []
        lines += ["8BITMIME"] if s.eight_bit else []
        lines += ["STARTTLS"] if s.starttls and not self.session.tls else []
        lines += [f"AUTH {s.auth_mechanisms}"] if s.auth is not None and (self.session.tls or not s.auth_after_tls) else []
        lines += list(s.extensions)
        lines += ["ENHANCEDSTATUSCODES"]
        body = "\r\n".join(f"250-{item}" for item in lines[:-1]) + f"\r\n250 {lines[-1]}"
        self._reply(body, "EHLO")

    def do_AUTH(self, text: str) -> None:
        s, words = self.server, text.split()
        self.session.auth_before_tls |= not self.session.tls
        if s.auth is None:
            self._reply("502 5.5.1 no AUTH here", "AUTH")
        elif s.auth_after_tls and not self.session.tls:
            self._reply("530 5.7.0 Must issue a STARTTLS command first", "AUTH")
        elif len(words) == 3 and words[1].upper() == "PLAIN":
            _authzid, user, password = base64.b64decode(words[2]).decode().split("\0")
            self._check(user, password)
        elif len(words) == 2 and words[1].upper() == "LOGIN":
            self._login = ""
            self._reply("334 VXNlcm5hbWU6", "AUTH")
        else:
            self._reply("504 5.5.4 unknown mechanism", "AUTH")

    def _login_step(self, text: str) -> None:
        value = base64.b64decode(text).decode()
        if not self._login:
            self._login = value or "?"
            self._reply("334 UGFzc3dvcmQ6", "AUTH")
            return
        user, self._login = self._login, None
        self._check(user, value)

    def _check(self, user: str, password: str) -> None:
        assert self.server.auth is not None
        if self.server.auth.get(user) == password:
            self.session.auth_user = user
            self._reply("235 2.7.0 Authentication successful", "AUTH")
        else:
            self._reply("535 5.7.8 Authentication credentials invalid", "AUTH")

    def do_HELO(self, text: str) -> None:
        self._reply(f"250 {self.server.hostname}", "HELO")

    def do_STARTTLS(self, text: str) -> None:
        self._reply("220 2.0.0 go ahead", "STARTTLS")
        self.transport.startTLS(self.server.tls_options)
        self.session.tls = True

    def do_MAIL(self, text: str) -> None:
        self._accepted = 0
        self._reply(self.server.mail_reply, "MAIL")

    def do_RCPT(self, text: str) -> None:
        address = text.partition("<")[2].partition(">")[0]
        reply = self.server.rcpt_replies.get(address, self.server.rcpt_default)
        self._accepted += reply.startswith("2")
        self._reply(reply, "RCPT")

    def do_DATA(self, text: str) -> None:
        # Like a real server: no accepted recipient, no DATA (RFC 2920 relies on it).
        reply = self.server.data_reply if self._accepted else "554 5.5.1 no valid recipients"
        self._reply(reply, "DATA")
        if reply.startswith("354"):
            self._data = bytearray(b"\r\n")  # the DATA line's CRLF ends "line zero"
            self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        start = max(0, len(self._data) - len(END_OF_DATA))
        self._data += data
        end = self._data.find(END_OF_DATA, start)
        if end < 0:
            return
        raw, rest = bytes(self._data[2 : end + len(END_OF_DATA)]), bytes(self._data[end + len(END_OF_DATA) :])
        self._data = bytearray()
        self.session.data = raw
        self.server.messages.append(raw)
        self._accepted = 0
        if self.server.final_delay:
            self._later = self.server._reactor.callLater(self.server.final_delay, self._reply,
                                                         self.server.final_reply, ".")
        else:
            self._reply(self.server.final_reply, ".")
        self.setLineMode(rest)

    def do_RSET(self, text: str) -> None:
        self._accepted = 0
        self._reply("250 2.0.0 reset", "RSET")

    def do_NOOP(self, text: str) -> None:
        self._reply("250 2.0.0 ok", "NOOP")

    def do_QUIT(self, text: str) -> None:
        self._reply("221 2.0.0 bye", "QUIT")
        self.transport.loseConnection()


class FakeSMTPServer(Factory):
    """Builds one _FakeSMTPProtocol per connection; the knobs are attributes."""

    def __init__(
        self,
        *,
        hostname: str = "mx.fake.test",
        greeting: str = "220 mx.fake.test ESMTP fake",
        ehlo_reply: str | None = None,
        pipelining: bool = True,
        starttls: bool = False,
        tls_options: Any = None,
        size: int | None = 50_000_000,
        eight_bit: bool = True,
        mail_reply: str = "250 2.1.0 sender ok",
        rcpt_replies: dict[str, str] | None = None,
        rcpt_default: str = "250 2.1.5 recipient ok",
        data_reply: str = "354 go ahead",
        final_reply: str = "250 2.0.0 queued as FAKE",
        stall_on: str | None = None,
        drop_connections: bool = False,
        auth: dict[str, str] | None = None,
        auth_after_tls: bool = True,
        auth_mechanisms: str = "PLAIN LOGIN",
        implicit_tls: bool = False,
        final_delay: float = 0.0,
        greeting_delay: float = 0.0,
        extensions: tuple[str, ...] = (),
        reactor: Any = None,
    ) -> None:
        self.hostname, self.greeting, self.ehlo_reply = hostname, greeting, ehlo_reply
        self.pipelining, self.starttls, self.tls_options = pipelining, starttls, tls_options
        self.size, self.eight_bit = size, eight_bit
        self.mail_reply, self.rcpt_replies, self.rcpt_default = mail_reply, dict(rcpt_replies or {}), rcpt_default
        self.data_reply, self.final_reply = data_reply, final_reply
        self.stall_on, self.drop_connections = stall_on, drop_connections
        self.auth, self.auth_after_tls, self.implicit_tls = auth, auth_after_tls, implicit_tls
        self.auth_mechanisms = auth_mechanisms
        self.final_delay, self.greeting_delay = final_delay, greeting_delay
        self.extensions = extensions
        self.most_at_once = 0
        self.sessions: list[Session] = []
        self.messages: list[bytes] = []
        self.port = 0
        self.interface = "127.0.0.1"
        self._listening: Any = None
        self._live: list[_FakeSMTPProtocol] = []
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor

    def buildProtocol(self, addr: Any) -> _FakeSMTPProtocol:
        return _FakeSMTPProtocol(self)

    async def start(self, interface: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on interface:port (a loopback address; 0 picks a port) and return the port."""
        if self.implicit_tls:
            self._listening = self._reactor.listenSSL(port, self, self.tls_options, interface=interface)
        else:
            self._listening = self._reactor.listenTCP(port, self, interface=interface)
        self.interface, self.port = interface, self._listening.getHost().port
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every live session, waiting until all are gone.

        Trial fails a test that leaves sockets open, so addCleanup(server.stop).
        """
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()
        for protocol in list(self._live):
            protocol.transport.abortConnection()
            await protocol.lost

    def message_bodies(self) -> list[bytes]:
        """Received messages with dot-stuffing undone and the final '.' line removed."""
        bodies = []
        for raw in self.messages:
            body = raw[: -len(b".\r\n")]
            body = (b"\r\n" + body).replace(b"\r\n..", b"\r\n.")[2:]
            bodies.append(body)
        return bodies

    @property
    def live(self) -> int:
        """Sessions open right now."""
        return len(self._live)
