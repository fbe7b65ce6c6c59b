"""SPF (RFC 7208): check_host() for the client's address, evaluated with twisted.names on the reactor.

Why not pyspf, the field's Python implementation: it makes its lookups
itself, synchronously, through a DNS library of its own (dnspython or
pydns) that would bypass `relay.nameservers`' twisted.names resolver.
Running it in a thread and answering each lookup from the reactor with
`blockingCallFromThread` would hold a pool thread for the whole
evaluation (up to ten serial lookups, each up to `dns_timeout`), and its
last release is from 2020. check_host() itself is small (section 4-6, the
syntax in `spf_record`); written on twisted.names it runs on the reactor
with no thread at all, every query bounded by the timeout, and the
limits of section 4.6.4 kept in one place: at most 10 terms that cause
DNS lookups (include, a, mx, ptr, exists, redirect), at most 2 void
lookups (NXDOMAIN or no answer), at most 10 names per mx or ptr.
"""

from __future__ import annotations

import functools
import ipaddress

from mailgate.mailauth.results import SPFResult
from mailgate.mailauth.spf_record import (
    DNS_TERMS,
    MacroContext,
    PermError,
    Term,
    expand_domain,
    is_spf_record,
    parse_record,
)
from mailgate.net.dns import LookupFailed, Lookups, NoSuchName, lookup_addresses, lookup_mx, lookup_ptr, lookup_txt

MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
MAX_NAMES = 10  # MX hosts of one mx, names of one ptr
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
CACHED = 1024  # parsed records and networks kept: a sender's next message parses neither again


class TempError(Exception):
    """A lookup failed in a way that may pass: the result is `temperror`."""


async def check_spf(lookups: Lookups, client_ip: str, mail_from: str, helo: str) -> SPFResult:
    """SPF for MAIL FROM's domain, or for the HELO name when MAIL FROM is null (RFC 7208 2.4)."""
    identity, value, domain = spf_identity(mail_from, helo)
    sender = mail_from or f"postmaster@{helo}"
    try:
        ip = _client(client_ip)
    except ValueError:
        return SPFResult("none", identity, value, domain, "no client address")
    if not _usable_domain(domain):
        return SPFResult("none", identity, value, domain, "no domain to check")
    evaluation = _Evaluation(lookups, ip, sender, helo)
    try:
        result = await evaluation.check_host(domain)
    except PermError as error:
        return SPFResult("permerror", identity, value, domain, str(error))
    except TempError as error:
        return SPFResult("temperror", identity, value, domain, str(error))
    return SPFResult(result, identity, value, domain)


def spf_identity(mail_from: str, helo: str) -> tuple[str, str, str]:
    """What SPF checks (RFC 7208 2.4): ("mailfrom", MAIL FROM, its domain), or ("helo", HELO, HELO) for a null one."""
    return ("mailfrom", mail_from, mail_from.rpartition("@")[2]) if mail_from else ("helo", helo, helo)


def _client(text: str) -> IP:
    """The client's address; an IPv4-mapped IPv6 address is the IPv4 address it maps (RFC 7208 5)."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _usable_domain(domain: str) -> bool:
    """RFC 7208 4.3: a malformed or single-label domain has no SPF ("none")."""
    labels = domain.rstrip(".").split(".")
    return len(labels) > 1 and all(0 < len(label) <= 63 for label in labels) and len(domain) <= 253


class _Evaluation:
    """One check_host() with its includes and redirects: the lookup limits count across all of them."""

    def __init__(self, lookups: Lookups, ip: IP, sender: str, helo: str) -> None:
        self._lookups = lookups
        self._ip = ip
        self._sender = sender
        self._helo = helo
        self._terms = 0
        self._voids = 0

    async def check_host(self, domain: str, nested: bool = False) -> str:
        record = await self._record(domain)
        if record is None:
            if nested:  # an include or redirect to a domain without SPF (RFC 7208 5.2, 6.1)
                raise PermError(f"no SPF record at {domain}")
            return "none"
        mechanisms, redirect = _parsed(record)
        context = MacroContext(self._sender, domain, str(self._ip), self._helo)
        for term in mechanisms:
            if term.name in DNS_TERMS:
                self._count_term()
            if await self._matches(term, context):
                return term.result
        if redirect is not None:
            self._count_term()
            return await self.check_host(expand_domain(redirect.argument, context), nested=True)
        return "neutral"

    async def _record(self, domain: str) -> str | None:
        """The one SPF record at `domain`, None when there is none; PermError for two."""
        try:
            texts = await lookup_txt(self._lookups, domain)
        except NoSuchName:
            return None
        except LookupFailed as error:
            raise TempError(str(error)) from None
        records = [text for text in texts if is_spf_record(text)]
        if len(records) > 1:
            raise PermError(f"{len(records)} SPF records at {domain}")
        if not records:
            return None
        try:
            return records[0].decode("ascii")
        except UnicodeDecodeError:
            raise PermError(f"the SPF record at {domain} is not ASCII") from None

    def _count_term(self) -> None:
        self._terms += 1
        if self._terms > MAX_DNS_TERMS:
            raise PermError(f"more than {MAX_DNS_TERMS} DNS lookups")

    def _count_void(self) -> None:
        self._voids += 1
        if self._voids > MAX_VOID_LOOKUPS:
            raise PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")

    async def _matches(self, term: Term, context: MacroContext) -> bool:
        target = expand_domain(term.argument, context) if term.argument else context.domain
        if term.name == "all":
            return True
        if term.name in ("ip4", "ip6"):
            return self._within(term.argument, term)
        if term.name == "include":
            return await self._include(target)
        if term.name == "a":
            return any(self._within(address, term) for address in await self._addresses(target, void=True))
        if term.name == "mx":
            return await self._mx(target, term)
        if term.name == "ptr":
            return await self._ptr(target)
        return bool(await self._addresses(target, void=True, ipv6=False))  # exists: an A record, always

    async def _include(self, target: str) -> bool:
        """RFC 7208 5.2: pass matches; fail, softfail, neutral do not; errors are errors."""
        return await self.check_host(target, nested=True) == "pass"

    def _within(self, address: str, term: Term) -> bool:
        network = _network(address, term.cidr4, term.cidr6)
        return network.version == self._ip.version and self._ip in network

    async def _addresses(self, name: str, void: bool = False, ipv6: bool | None = None) -> list[str]:
        family_v6 = self._ip.version == 6 if ipv6 is None else ipv6
        try:
            found = await lookup_addresses(self._lookups, name, family_v6)
        except NoSuchName:
            found = []
        except LookupFailed as error:
            raise TempError(str(error)) from None
        if not found and void:
            self._count_void()
        return found

    async def _mx(self, target: str, term: Term) -> bool:
        try:
            hosts = await lookup_mx(self._lookups, target)
        except NoSuchName:
            hosts = []
        except LookupFailed as error:
            raise TempError(str(error)) from None
        if not hosts:
            self._count_void()
        if len(hosts) > MAX_NAMES:
            raise PermError(f"more than {MAX_NAMES} MX hosts at {target}")
        for host in hosts:
            if any(self._within(address, term) for address in await self._addresses(host)):
                return True
        return False

    async def _ptr(self, target: str) -> bool:
        """RFC 7208 5.5: a validated name of the client at or below `target`; lookup errors do not match."""
        try:
            names = await lookup_ptr(self._lookups, str(self._ip))
        except (NoSuchName, LookupFailed):
            names = []
        if not names:
            self._count_void()
        for name in names[:MAX_NAMES]:
            if name != target and not name.endswith("." + target):
                continue
            try:
                if str(self._ip) in await self._addresses(name):
                    return True
            except TempError:
                continue
        return False


@functools.lru_cache(maxsize=CACHED)
def _parsed(record: str) -> tuple[tuple[Term, ...], Term | None]:
    """parse_record, once per record text (a PermError is not kept: such a record is parsed each time)."""
    mechanisms, redirect = parse_record(record)
    return tuple(mechanisms), redirect


@functools.lru_cache(maxsize=CACHED)
def _network(address: str, cidr4: int, cidr6: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network of an address and the prefix length for its family (ValueError for a bad address)."""
    candidate = ipaddress.ip_address(address)
    length = cidr4 if candidate.version == 4 else cidr6
    return ipaddress.ip_network(f"{candidate}/{length}", strict=False)
