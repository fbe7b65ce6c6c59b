"""DANE for outbound SMTP (RFC 7672): which MX hosts have authenticated TLSA records, and the TLS they then need.

Only answers with the AD bit count (mailgate.net.dnssec): with a resolver
that does not validate, no host has TLSA records as far as mailgate can
tell, and mail goes as without DANE; `probe` says so once at start-up.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.ssl import CertificateOptions
from twisted.names import dns
from twisted.logger import Logger

from mailgate.net.dane import DANEClientCreator, TLSARecord
from mailgate.net.dnssec import TLSA, SecureResolver
from mailgate.outbound.smtp_dialogue import HostTLS

log = Logger()


class DANE:
    """HostTLS for MX hosts whose `_PORT._tcp.HOST` TLSA records validated."""

    def __init__(self, resolver: SecureResolver) -> None:
        self._resolver = resolver

    async def host_tls(self, host: str, port: int) -> HostTLS | None:
        """None: DANE does not apply. TemporaryDNSError (a DeliveryError) when the lookup fails:
        the host is skipped, as it may be protected (RFC 7672 2.2: never downgraded)."""
        answer = await self._resolver.query(f"_{port}._tcp.{host}", TLSA)
        if not answer.secure or not answer.records:
            return None
        records = []
        for header in answer.records:
            try:
                records.append(TLSARecord.from_wire(cast(dns.UnknownRecord, header.payload).data))
            except (AttributeError, ValueError):
                continue
        usable = [record for record in records if record.usable]
        if not usable:  # RFC 7672 3.1.3: encrypt, without authentication
            return HostTLS("required", CertificateOptions, f"TLSA records of {host} (none usable for SMTP)")
        return HostTLS("required", lambda: DANEClientCreator(host, usable), f"DANE TLSA records of {host}")

    async def probe(self) -> None:
        """One line at start-up when the resolver does not validate DNSSEC (DANE is then inert)."""
        servers = ", ".join(f"{host}:{port}" for host, port in self._resolver.servers)
        if await self._resolver.validates():
            log.info("relay.dane: the resolver ({servers}) validates DNSSEC: TLSA records are used", servers=servers)
            return
        log.warn("relay.dane: the resolver ({servers}) does not validate DNSSEC (no AD bit on the root zone's "
                 "SOA): TLSA records are only used from answers that carry AD, so DANE is in effect off; "
                 "list a local validating resolver (e.g. unbound) in relay.nameservers", servers=servers)
