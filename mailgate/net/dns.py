"""DNS lookups through twisted.names, with errors each caller can act on.

Relaying needs two answers from DNS: which hosts accept mail for a domain
(RFC 5321 section 5.1) and which addresses those hosts have. Failures are
turned into DeliveryErrors here, so the relay can hand a per-recipient SMTP
code to the queue without knowing anything about DNS.

Mail authentication (SPF, DKIM keys, DMARC policies) needs TXT, A/AAAA, MX
and PTR answers with "no such name" told apart from "try again later", and
every query bounded by a timeout: `lookup` and the helpers after it.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import (
    Deferred, DeferredList, DeferredSemaphore, TimeoutError as DeferredTimeoutError, fail, succeed,
)
from twisted.python.failure import Failure
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


# --- lookups for mail authentication (SPF, DKIM keys, DMARC) ------------------------------

MAX_CNAME_CHAIN = 8  # a resolver that does not chase CNAMEs is followed this far
_LOOKUPS = {dns.TXT: "lookupText", dns.A: "lookupAddress", dns.AAAA: "lookupIPV6Address",
            dns.MX: "lookupMailExchange", dns.PTR: "lookupPointer"}


@dataclass(frozen=True)
class Lookups:
    """How to ask DNS: a twisted.names resolver, the timeout per query, the clock that times it."""

    resolver: Any
    timeout_seconds: float
    clock: Any


class NoSuchName(Exception):
    """NXDOMAIN: the name does not exist (SPF counts it as a void lookup)."""


class LookupFailed(Exception):
    """Timeout, SERVFAIL, REFUSED, a lost server: the answer may differ later (a `temperror`)."""


class CachingResolver:
    """A resolver whose answers are kept for their TTL (at most 5 minutes), "no such name" and "no
    data" for a minute: a sender's next message costs the checks no query (nor a UDP socket, which
    twisted.names opens per query). Failures (timeouts, SERVFAIL) are never kept. At most
    MAX_ENTRIES names; the oldest go first.
    """

    MAX_TTL_SECONDS = 300.0
    NEGATIVE_TTL_SECONDS = 60.0
    MAX_ENTRIES = 10_000

    def __init__(self, resolver: Any, clock: Any) -> None:
        self._resolver = resolver
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, Any]] = {}  # (method, name) -> (expiry, answer or Failure)

    def _lookup(self, method: str, name: str, timeout: Any = None) -> Deferred[Any]:
        key = (method, name.strip().rstrip(".").lower())
        kept = self._entries.get(key)
        if kept is not None and kept[0] > self._clock.seconds():
            return fail(kept[1]) if isinstance(kept[1], Failure) else succeed(kept[1])
        asked: Deferred[Any] = getattr(self._resolver, method)(name, timeout=timeout)
        return asked.addCallbacks(self._keep_answer, self._keep_nxdomain, callbackArgs=(key,), errbackArgs=(key,))

    def _keep_answer(self, answer: Any, key: tuple[str, str]) -> Any:
        records = answer[0]
        ttl = min((record.ttl for record in records), default=self.NEGATIVE_TTL_SECONDS)
        self._keep(key, min(float(ttl), self.MAX_TTL_SECONDS), answer)
        return answer

    def _keep_nxdomain(self, failure: Failure, key: tuple[str, str]) -> Failure:
        if failure.check(DNSNameError):
            self._keep(key, self.NEGATIVE_TTL_SECONDS, failure)
        return failure

    def _keep(self, key: tuple[str, str], seconds: float, value: Any) -> None:
        if seconds <= 0:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self.MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock.seconds() + seconds, value)

    def lookupText(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802 - IResolver's names
        return self._lookup("lookupText", name, timeout)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        return self._lookup("lookupAddress", name, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        return self._lookup("lookupIPV6Address", name, timeout)

    def lookupMailExchange(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        return self._lookup("lookupMailExchange", name, timeout)

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:  # noqa: N802
        return self._lookup("lookupPointer", name, timeout)


async def lookup(lookups: Lookups, name: str, record_type: int) -> list[Any]:
    """The payloads of `record_type` records at `name`, CNAMEs followed; [] when the name has none.

    Raises NoSuchName or LookupFailed, and never takes longer than
    `lookups.timeout_seconds` per query: the resolver's own timer (one attempt
    of that length) fires first, a Deferred timeout on `lookups.clock` bounds the rest
    (a TCP retry after truncation, a resolver chain), so a server that never
    answers costs one timeout, never a stalled session.
    """
    target = name.strip().rstrip(".").lower()
    for _hop in range(MAX_CNAME_CHAIN):
        answers = await _query(lookups, target, record_type)
        found = [answer.payload for answer in answers if answer.type == record_type]
        if found:
            return found
        aliases = [answer.payload for answer in answers if answer.type == dns.CNAME and _name(answer.name) == target]
        if not aliases:
            return []
        target = _name(aliases[0].name)
    raise LookupFailed(f"CNAME chain longer than {MAX_CNAME_CHAIN} at {name}")


async def _query(lookups: Lookups, name: str, record_type: int) -> list[Any]:
    timeout_seconds = lookups.timeout_seconds
    method = getattr(lookups.resolver, _LOOKUPS[record_type])
    asked = method(name, timeout=(timeout_seconds,))
    if not asked.called:  # an answer from CachingResolver is in already: no timer to set and cancel
        asked.addTimeout(timeout_seconds, lookups.clock)
    try:
        answers, _authority, _additional = await asked
    except DNSNameError:
        raise NoSuchName(name) from None
    except DeferredTimeoutError:
        raise LookupFailed(f"no answer for {name} within {timeout_seconds:g} s") from None
    except Exception as error:  # SERVFAIL, REFUSED, a format error, a network error
        raise LookupFailed(f"{name}: {type(error).__name__}: {error}") from None
    return list(answers)


async def lookup_txt(lookups: Lookups, name: str) -> list[bytes]:
    """Each TXT record at `name` as one string: its character-strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
    records = await lookup(lookups, name, dns.TXT)
    return [b"".join(cast(dns.Record_TXT, record).data) for record in records]


async def lookup_addresses(lookups: Lookups, name: str, ipv6: bool) -> list[str]:
    """The A (or, with `ipv6`, AAAA) addresses of `name`, as text."""
    record_type = dns.AAAA if ipv6 else dns.A
    records = await lookup(lookups, name, record_type)
    header = [dns.RRHeader(b"", record_type, payload=record) for record in records]
    return _addresses(header)


async def lookup_mx(lookups: Lookups, name: str) -> list[str]:
    """The MX host names of `name`, in preference order (null MX "." left out)."""
    records = await lookup(lookups, name, dns.MX)
    ordered = sorted(records, key=lambda record: record.preference)
    return [host for record in ordered if (host := _name(record.name))]


async def lookup_ptr(lookups: Lookups, address: str) -> list[str]:
    """The names a PTR lookup gives for `address` (in-addr.arpa or ip6.arpa)."""
    reverse = ipaddress.ip_address(address).reverse_pointer
    records = await lookup(lookups, reverse, dns.PTR)
    return [name for record in records if (name := _name(record.name))]
