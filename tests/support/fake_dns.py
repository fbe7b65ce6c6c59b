"""A tiny authoritative DNS server on 127.0.0.1 for tests, built on twisted.names.

Usage from a twisted.trial TestCase (the reactor is running)::

    self.dns = FakeDNSServer({
        "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
        "mx1.remote.test": {"A": ["127.0.0.2"]},
        "mx2.remote.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]},
        "alias.remote.test": {"CNAME": "remote.test"},
        "remote.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    }).start()
    self.addCleanup(self.dns.stop)
    resolver = make_resolver([self.dns.nameserver], reactor, timeouts=(0.5,))

Also "TXT": ["v=STSv1; id=1"] and "TLSA": [(usage, selector, matching, data)];
names in `secure` are answered with the AD bit set, as a validating resolver
answers for signed zones ("" is the root, for DANE's start-up probe).

TXT values are strings, one per record; a value over 255 octets goes out as
one record of several character-strings, as a DKIM key must (RFC 6376
3.6.2.2). PTR values are host names. Names not in the table answer NXDOMAIN; a name in the table without the
asked type answers NOERROR with no records. `fail(name, how)` makes one name
answer "servfail", "refused" or "nxdomain", or not answer at all
("timeout"); `null_mx(domain)` publishes an RFC 7505 null MX. The table can
be changed while the server runs (`records[name] = {...}`). Every question
is appended to `queries` as (name, type name), e.g. ("remote.test", "MX").

It listens on UDP and TCP on the same port (TCP for truncated answers), so
`nameserver` ("127.0.0.1:PORT") works directly as a `relay.nameservers`
entry for a gateway started in a subprocess too.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.names import dns
from twisted.names.server import DNSServerFactory

TTL = 60
TLSA = 52  # RFC 6698
FAILURE_CODES = {"servfail": dns.ESERVER, "refused": dns.EREFUSED, "nxdomain": dns.ENAME}


class _ZoneFactory(DNSServerFactory):
    """Answers straight from the owning FakeDNSServer's table.

    Bypasses the resolver chain: DNSServerFactory logs resolver errors with
    log.err, which trial would count as a test failure for SERVFAIL cases.
    """

    def __init__(self, owner: FakeDNSServer) -> None:
        super().__init__()
        self.owner = owner

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        query = message.queries[0]
        name = query.name.name.decode("ascii", "replace").rstrip(".").lower()
        self.owner.queries.append((name, dns.QUERY_TYPES.get(query.type, str(query.type))))
        how = self.owner.failures.get(name)
        if how == "timeout":
            return  # say nothing: the client's own timeout must fire
        if how in FAILURE_CODES:
            self.sendReply(protocol, self._responseFromMessage(message, rCode=FAILURE_CODES[how]), address)
            return
        if name not in self.owner.records:
            self.sendReply(protocol, self._responseFromMessage(message, rCode=dns.ENAME), address)
            return
        answers = _answers(query.name.name, self.owner.records[name], query.type)
        response = self._responseFromMessage(message, answers=answers)
        response.auth = True
        response.authenticData = int(name in self.owner.secure)  # as a validating resolver says "secure"
        self.sendReply(protocol, response, address)


def _answers(owner: bytes, table: dict[str, Any], qtype: int) -> list[dns.RRHeader]:
    """RRHeaders for one name; a CNAME is returned alone, like a server that does not chase."""
    if "CNAME" in table:
        return [dns.RRHeader(owner, dns.CNAME, ttl=TTL, payload=dns.Record_CNAME(table["CNAME"], ttl=TTL), auth=True)]
    payloads: list[Any] = []
    if qtype in (dns.MX, dns.ALL_RECORDS):
        payloads += [dns.Record_MX(pref, b"" if host in ("", ".") else host.encode(), ttl=TTL)
                     for pref, host in table.get("MX", [])]
    if qtype in (dns.A, dns.ALL_RECORDS):
        payloads += [dns.Record_A(address, ttl=TTL) for address in table.get("A", [])]
    if qtype in (dns.AAAA, dns.ALL_RECORDS):
        payloads += [dns.Record_AAAA(address, ttl=TTL) for address in table.get("AAAA", [])]
    if qtype in (dns.TXT, dns.ALL_RECORDS):
        payloads += [dns.Record_TXT(*_strings(text), ttl=TTL) for text in table.get("TXT", [])]
    if qtype in (dns.PTR, dns.ALL_RECORDS):
        payloads += [dns.Record_PTR(name.encode(), ttl=TTL) for name in table.get("PTR", [])]
    headers = [dns.RRHeader(owner, p.TYPE, ttl=TTL, payload=p, auth=True) for p in payloads]
    if qtype in (TLSA, dns.ALL_RECORDS):  # twisted.names has no TLSA class: RFC 6698 2.1's wire form
        headers += [dns.RRHeader(owner, TLSA, ttl=TTL, auth=True,
                                 payload=dns.UnknownRecord(bytes([usage, selector, matching]) + data, ttl=TTL))
                    for usage, selector, matching, data in table.get("TLSA", [])]
    return headers


def _strings(text: str | bytes) -> list[bytes]:
    """One TXT record's character-strings: 255 octets at most each."""
    data = text.encode() if isinstance(text, str) else text
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


class FakeDNSServer:
    """Serves `records` ({name: {"MX": [(pref, host)], "A": [...], "AAAA": [...], "TXT": [...], "PTR": [...],
    "CNAME": name}})."""

    def __init__(self, records: dict[str, dict[str, Any]] | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        # A deep copy: tests mutate it (null_mx) and often share one module-level zone.
        self.records: dict[str, dict[str, Any]] = {k.lower(): copy.deepcopy(v) for k, v in (records or {}).items()}
        self.failures: dict[str, str] = {}
        self.secure: set[str] = set()  # names answered with the AD bit (DNSSEC-validated, RFC 4035 3.2.3)
        self.queries: list[tuple[str, str]] = []
        self.port = 0
        self._listening: list[Any] = []

    @property
    def nameserver(self) -> str:
        """This server as a `relay.nameservers` entry."""
        return f"127.0.0.1:{self.port}"

    def fail(self, name: str, how: str) -> None:
        """Make `name` answer "servfail", "refused", "nxdomain", or "timeout" (no answer)."""
        if how not in (*FAILURE_CODES, "timeout"):
            raise ValueError(how)
        self.failures[name.lower()] = how

    def null_mx(self, domain: str) -> None:
        """Publish RFC 7505 'MX 0 .': the domain accepts no mail."""
        self.records.setdefault(domain.lower(), {})["MX"] = [(0, ".")]

    def start(self) -> FakeDNSServer:
        """Listen on 127.0.0.1 (UDP, then TCP on the same port); synchronous."""
        factory = _ZoneFactory(self)
        for _attempt in range(20):
            udp = self.reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(port, factory, interface="127.0.0.1")
            except CannotListenError:
                udp.stopListening()  # TCP side taken by someone else: pick another port
                continue
            self.port, self._listening = port, [udp, tcp]
            return self
        raise RuntimeError("no port free for both UDP and TCP")

    async def stop(self) -> None:
        """Stop listening (awaitable, so addCleanup waits for the sockets to close)."""
        listening, self._listening = self._listening, []
        for port in listening:
            stopped = port.stopListening()  # UDP ports may answer None
            if stopped is not None:
                await stopped
