"""MX and address resolution for outbound mail, with SMTP-style errors.

Relaying needs two answers from DNS: which hosts accept mail for a domain
(RFC 5321 section 5.1) and which addresses those hosts have. Failures are
turned into DeliveryErrors here, so the relay can hand a per-recipient SMTP
code to the queue without knowing anything about DNS.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import DeferredList, DeferredSemaphore, TimeoutError as DeferredTimeoutError
from twisted.names import client, dns, hosts, resolve
from twisted.names.error import DNSNameError

from mailgate.core.errors import DeliveryError

# Twisted's own retry schedule: 60 s in all before a query counts as timed out.
DEFAULT_TIMEOUTS: tuple[float, ...] = (1.0, 3.0, 11.0, 45.0)
DEFAULT_DNS_PORT = 53
# Outbound delivery asks with short waits (7 s in all): a slow DNS server must cost an
# attempt seconds, not a minute, and a lookup that fails is retried with the message.
OUTBOUND_DNS_TIMEOUTS: tuple[float, ...] = (1.0, 2.0, 4.0)
MAX_CONCURRENT_LOOKUPS = 50  # outbound lookups at once; more wait their turn (their own limit)


class TemporaryDNSError(DeliveryError):
    """Timeout, SERVFAIL, REFUSED: the answer may differ later (RFC 3463 4.4.3)."""

    default_code = 451
    default_enhanced = "4.4.3"
    default_text = "Temporary DNS failure, try again later"


class PermanentDNSError(DeliveryError):
    """NXDOMAIN, null MX, no address: retrying will not help."""

    default_code = 550
    default_enhanced = "5.1.2"
    default_text = "Domain not found"


def parse_nameserver(entry: str) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or a bare IPv6 address -> (host, port)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else DEFAULT_DNS_PORT
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, DEFAULT_DNS_PORT


def make_resolver(
    nameservers: Sequence[str], reactor: Any, *, timeouts: Sequence[float] = DEFAULT_TIMEOUTS
) -> Any:
    """An IResolver for `relay.nameservers`, or the system's when that is empty.

    Built directly rather than with client.createResolver: that function
    takes no reactor, and given explicit servers it still adds the ones in
    /etc/resolv.conf, so a test (or a split-horizon setup) could silently
    get answers from the wrong server. /etc/hosts is consulted only for the
    system resolver, as the C library would.
    """
    if nameservers:
        servers = [parse_nameserver(entry) for entry in nameservers]
        return client.Resolver(servers=servers, reactor=reactor, timeout=tuple(timeouts))
    system = client.Resolver(resolv=b"/etc/resolv.conf", reactor=reactor, timeout=tuple(timeouts))
    return resolve.ResolverChain([hosts.Resolver(b"/etc/hosts"), system])


def ip_literal(host: str) -> str | None:
    """The address in '1.2.3.4', '[1.2.3.4]' or '[IPv6:::1]', else None.

    Address-literal domains (RFC 5321 section 4.1.3) name a host directly,
    so they skip DNS entirely.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text[:5].lower() == "ipv6:":
            text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _classify(failure_value: BaseException, name: str, what: str) -> DeliveryError:
    """Map a twisted.names failure to our temporary/permanent DNS error."""
    if isinstance(failure_value, DNSNameError):
        return PermanentDNSError(
            f"{what} {name} not found", code=550, enhanced="5.1.2", reason=f"NXDOMAIN for {name}"
        )
    if isinstance(failure_value, DeferredTimeoutError):
        reason = f"DNS timeout looking up {what} {name}"
    else:
        reason = f"DNS failure looking up {what} {name}: {failure_value!r}"
    return TemporaryDNSError(f"Temporary DNS failure for {name}", reason=reason)


def _name(record_name: dns.Name) -> str:
    return record_name.name.decode("ascii", "replace").rstrip(".").lower()


class MXResolver:
    """Answers "where does mail for this domain go" for the relay.

    `shuffle` spreads load across equal-preference MX hosts as RFC 5321
    section 5.1 asks; tests inject a deterministic one.
    """

    def __init__(self, resolver: Any, shuffle: Callable[[list[str]], None] = random.shuffle,
                 max_lookups: int = MAX_CONCURRENT_LOOKUPS) -> None:
        self._resolver = resolver
        self._shuffle = shuffle
        self._limit = DeferredSemaphore(max_lookups)

    def _ask(self, method: str, name: str) -> Any:
        """One lookup, waiting its turn among MAX_CONCURRENT_LOOKUPS."""
        return self._limit.run(getattr(self._resolver, method), name)

    async def txt(self, name: str) -> list[str]:
        """The TXT records of `name`, each record's strings joined; [] when there are none (or NXDOMAIN)."""
        name = name.strip().rstrip(".").lower()
        try:
            answers, _authority, _additional = await self._ask("lookupText", name)
        except DNSNameError:
            return []
        except Exception as error:
            raise _classify(error, name, "TXT record") from error
        records = [cast(dns.Record_TXT, a.payload) for a in answers if a.type == dns.TXT]
        return [b"".join(record.data).decode("utf-8", "replace") for record in records]

    async def mx_hosts(self, domain: str) -> list[str]:
        """MX host names best first; [domain] when there are none (implicit MX)."""
        domain = domain.strip().rstrip(".").lower()
        if ip_literal(domain) is not None:
            return [domain]
        try:
            answers, _authority, _additional = await self._ask("lookupMailExchange", domain)
        except Exception as error:
            raise _classify(error, domain, "domain") from error
        records = [a.payload for a in answers if a.type == dns.MX]
        if not records:
            return [domain]  # RFC 5321 5.1: the domain itself is the implicit MX
        if len(records) == 1 and _name(records[0].name) == "" and records[0].preference == 0:
            raise PermanentDNSError(
                f"Domain {domain} does not accept mail (null MX)",
                code=556,
                enhanced="5.1.10",
            )
        return self._ordered(records)

    def _ordered(self, records: list[Any]) -> list[str]:
        """Sort by preference, shuffle within a preference, drop duplicates."""
        by_preference: dict[int, list[str]] = {}
        for record in records:
            host = _name(record.name)
            if host:  # a "." among real MX records is junk, not a null MX
                by_preference.setdefault(record.preference, []).append(host)
        ordered: list[str] = []
        for preference in sorted(by_preference):
            group = by_preference[preference]
            self._shuffle(group)
            ordered.extend(host for host in group if host not in ordered)
        return ordered

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of `host`; a literal address is itself.

        Both families are asked at once. One family failing while the other
        answers is not an error: the addresses found are usable.
        """
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        host = host.strip().rstrip(".").lower()
        results = await DeferredList(
            [self._ask("lookupAddress", host), self._ask("lookupIPV6Address", host)],
            consumeErrors=True,
        )
        found: list[str] = []
        errors: list[DeliveryError] = []
        for success, value in results:
            if success:
                found.extend(_addresses(value[0]))
            else:
                errors.append(_classify(value.value, host, "host"))
        if found:
            return found
        temporary = [error for error in errors if not error.permanent]
        if temporary:
            raise temporary[0]
        if errors:
            raise errors[0]
        raise PermanentDNSError(f"Host {host} has no address", code=550, enhanced="5.4.4")


def _addresses(answers: list[dns.RRHeader]) -> list[str]:
    """Dotted addresses from A and AAAA answers; CNAMEs along the way are skipped."""
    found = []
    for answer in answers:
        if answer.type == dns.A:
            found.append(cast(dns.Record_A, answer.payload).dottedQuad())
        elif answer.type == dns.AAAA:
            found.append(socket.inet_ntop(socket.AF_INET6, cast(dns.Record_AAAA, answer.payload).address))
    return found
