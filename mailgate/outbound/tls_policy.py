"""What TLS each outbound host needs: relay.tls, the smarthost's settings, MTA-STS and DANE.

The strictest rule that applies wins and nothing weakens it: a host that
DANE or an enforced MTA-STS policy covers is never sent mail in plain
text, whatever `relay.tls` says (RFC 7672 2.2, RFC 8461 5). DANE, where
an MX host has authenticated TLSA records, comes before MTA-STS (RFC 8461
section 2).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Awaitable, Callable

from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.logger import Logger

from mailgate.core.errors import DeliveryError
from mailgate.net.tls_client import TrustRoots, verifying_options
from mailgate.outbound.dane import DANE
from mailgate.outbound.mta_sts import MTASTS, Policy
from mailgate.outbound.smtp_dialogue import HostTLS

log = Logger()

HostTLSFor = Callable[[str], Awaitable[HostTLS]]


class TLSPolicy:
    """HostTLS for smarthost, `smtp:` and MX hosts.

    `client_tls_options(hostname)` replaces the default client options of
    "opportunistic" and "verify" (tests pass a trust root for their
    self-signed certificate).
    """

    def __init__(self, tls_mode: str, *, client_tls_options: Callable[[str], Any] | None = None,
                 smarthost_tls: str = "starttls", sts: MTASTS | None = None, trust: TrustRoots | None = None,
                 dane: DANE | None = None) -> None:
        self._mode, self._client_tls_options, self._smarthost_tls = tls_mode, client_tls_options, smarthost_tls
        self._sts, self._trust, self._dane = sts, trust or TrustRoots(), dane

    async def for_mx(self, domain: str, hosts: list[str], port: int) -> tuple[list[str], HostTLSFor]:
        """The MX hosts to try and the TLS each needs (DeliveryError: none may be tried)."""
        policy = await self._sts.policy(domain) if self._sts is not None else None
        if policy is not None and policy.mode != "none":
            hosts = self._sts_hosts(policy, hosts)

        async def tls_for(host: str) -> HostTLS:
            if self._dane is not None:
                dane = await self._dane.host_tls(host, port)
                if dane is not None:
                    return dane
            if policy is not None and policy.mode == "enforce":
                trust = self._trust
                return HostTLS("required", lambda: verifying_options(host, trust), policy.describe())
            base = self.for_host(host)
            if policy is not None and policy.mode == "testing":
                return replace(base, testing=f"{policy.describe()} asks for verified TLS")
            return base
        return hosts, tls_for

    @staticmethod
    def _sts_hosts(policy: Policy, hosts: list[str]) -> list[str]:
        """RFC 8461 4.1: enforce uses only matching MX hosts; testing uses all and logs the others."""
        matching = [host for host in hosts if policy.matches(host)]
        if policy.mode == "testing":
            for host in hosts:
                if host not in matching:
                    log.warn("MTA-STS testing: MX {host} does not match the {policy}; delivering anyway",
                             host=host, policy=policy.describe())
            return hosts
        if not matching:
            raise DeliveryError(f"{policy.describe()}: no MX host ({', '.join(hosts)}) matches "
                                f"{', '.join(policy.mx)}", code=451, enhanced="4.7.5")
        return matching

    def for_host(self, host: str) -> HostTLS:
        """relay.tls for a host nothing else covers."""
        if self._mode == "none":
            return HostTLS("none")
        if self._mode == "verify":
            return HostTLS("required", self._options(host, verify=True), "relay.tls = verify", "4.7.4")
        return HostTLS("opportunistic", self._options(host, verify=False))

    def for_smarthost(self, host: str, authenticating: bool) -> HostTLS:
        """relay.smarthost_tls; AUTH needs TLS to succeed (RFC 4954 4: never a password in clear)."""
        verify = self._mode == "verify"
        if self._smarthost_tls == "none":
            return HostTLS("none")
        if self._smarthost_tls == "implicit":
            return HostTLS("required", self._options(host, verify), "relay.smarthost_tls = implicit", implicit=True)
        if authenticating:
            return HostTLS("required", self._options(host, verify), "relay.smarthost_username (AUTH only over TLS)",
                           "4.7.4")
        return self.for_host(host)

    def _options(self, host: str, verify: bool) -> Callable[[], Any]:
        hook = self._client_tls_options
        if hook is not None:
            return lambda: hook(host)
        if verify:
            return lambda: optionsForClientTLS(host)
        return CertificateOptions  # verify=False: opportunistic encryption (RFC 7435)
