"""MTA-STS (RFC 8461): a domain's policy, found by TXT, fetched over HTTPS, cached on disk.

`policy(domain)` answers from the cache while the policy's `max_age` lasts
and its `_mta-sts` TXT id is unchanged; otherwise it fetches
`https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (address through
relay.nameservers, certificate verified, no redirects, 64 KB and 20 s at
most). A failed lookup or fetch keeps the cached policy while it lasts
(RFC 8461 5.1); with none cached, the domain has no policy. Policies live
in `<state_dir>/mta-sts/<domain>.json`, written whole (temp, fsync, rename).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

import treq
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.web.client import Agent

from mailgate.core.errors import DeliveryError
from mailgate.net.dns import MXResolver
from mailgate.net.tls_client import TrustRoots, verifying_options
from mailgate.store.durable import replace_file

log = Logger()

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3: senders may limit the size; 64 KB as Postfix's mta-sts-resolver
FETCH_TIMEOUT_SECONDS = 20.0
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: at most a year
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


class PolicyError(ValueError):
    """A TXT record or policy file that is not RFC 8461's."""


@dataclass(frozen=True)
class Policy:
    domain: str
    id: str  # the TXT record's id when it was fetched
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]  # patterns: "mx.example.net", "*.example.net"
    max_age: int  # seconds
    fetched: float  # unix seconds

    def valid(self, now: float) -> bool:
        return now < self.fetched + self.max_age

    def matches(self, host: str) -> bool:
        """RFC 8461 4.1: exact, or "*." plus exactly one leftmost label."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def describe(self) -> str:
        return f"MTA-STS policy of {self.domain} ({self.mode})"


def txt_id(records: list[str]) -> str | None:
    """The id of the one `v=STSv1` record; None without one, or with several (RFC 8461 3.1)."""
    found = [record for record in records if record.strip().startswith("v=STSv1")]
    if len(found) != 1:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in found[0].split(";") if "=" in part)
    policy_id = fields.get("id", "").strip()
    return policy_id if _ID.fullmatch(policy_id) else None


def parse_policy(domain: str, policy_id: str, text: str, fetched: float) -> Policy:
    """The policy file (RFC 8461 3.2): "key: value" lines, CRLF or LF."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode {mode!r} is none of enforce, testing, none")
    try:
        max_age = min(int((fields.get("max_age") or [""])[0]), MAX_AGE_LIMIT)
    except ValueError:
        raise PolicyError("max_age is not a number") from None
    mx = tuple(pattern.lower().rstrip(".") for pattern in fields.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("no mx line")
    return Policy(domain, policy_id, mode, mx, max(0, max_age), fetched)


class MTASTS:
    """Policies for relay.mta_sts, cached in memory and under `directory`."""

    def __init__(self, reactor: Any, resolver: MXResolver, directory: str, run_blocking: Callable[..., Deferred],
                 trust: TrustRoots, port: int = 443) -> None:
        self._reactor, self._resolver, self._directory = reactor, resolver, directory
        self._run, self._trust, self._port = run_blocking, trust, port
        self._memory: dict[str, Policy | None] = {}
        self._refreshing: dict[str, list[Deferred[Policy | None]]] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies now to mail for `domain`, or None."""
        if domain in self._refreshing:  # one lookup and fetch per domain at a time
            waiting: Deferred[Policy | None] = Deferred()
            self._refreshing[domain].append(waiting)
            return await waiting
        self._refreshing[domain] = []
        try:
            found = await self._refreshed(domain)
        except Exception:
            log.failure("MTA-STS: {domain}: policy lookup crashed", domain=domain)
            found = None
        for waiting in self._refreshing.pop(domain):
            waiting.callback(found)
        return found

    async def _refreshed(self, domain: str) -> Policy | None:
        now = self._reactor.seconds()
        cached = await self._cached(domain)
        usable = cached if cached is not None and cached.valid(now) else None
        try:
            current = txt_id(await self._resolver.txt(f"_mta-sts.{domain}"))
        except DeliveryError as error:
            log.info("MTA-STS: {domain}: TXT lookup failed ({why}); {using}", domain=domain,
                     why=error.reason or error.text, using="using the cached policy" if usable else "no policy")
            return usable
        if current is None or (usable is not None and usable.id == current):
            return usable  # no record: a cached policy still holds (RFC 8461 3.1, 5.1)
        try:
            text = await self._fetch(domain)
            fetched = parse_policy(domain, current, text, now)
        except Exception as error:
            log.warn("MTA-STS: {domain}: policy fetch failed: {error}; {using}", domain=domain,
                     error=_why(error), using="using the cached policy" if usable else "no policy")
            return usable
        log.info("MTA-STS: {domain}: policy {id}: mode {mode}, mx {mx}, max_age {age}", domain=domain,
                 id=current, mode=fetched.mode, mx=",".join(fetched.mx), age=fetched.max_age)
        self._memory[domain] = fetched
        await self._run(self._save, fetched)
        return fetched

    async def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        address = (await self._resolver.addresses(host))[0]
        endpoint_type = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        tcp = endpoint_type(self._reactor, address, self._port, timeout=FETCH_TIMEOUT_SECONDS)
        endpoint = wrapClientTLS(verifying_options(host, self._trust), tcp)
        agent = Agent.usingEndpointFactory(self._reactor, _Fixed(endpoint))
        client = treq.client.HTTPClient(agent)
        port = "" if self._port == 443 else f":{self._port}"
        response = await client.get(f"https://{host}{port}/.well-known/mta-sts.txt", allow_redirects=False,
                                    timeout=FETCH_TIMEOUT_SECONDS, reactor=self._reactor)
        chunks: list[bytes] = []

        def take(chunk: bytes) -> None:
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_POLICY_BYTES:
                raise PolicyError(f"larger than {MAX_POLICY_BYTES} bytes")

        await treq.collect(response, take)  # read whole (or aborted) in every case: the connection ends
        if response.code != 200:  # RFC 8461 3.3: 200 only, redirects not followed
            raise PolicyError(f"HTTP {response.code}")
        return b"".join(chunks).decode("utf-8", "replace")

    async def _cached(self, domain: str) -> Policy | None:
        if domain not in self._memory:
            self._memory[domain] = await self._run(self._load, domain)
        return self._memory[domain]

    def _path(self, domain: str) -> str:
        return os.path.join(self._directory, f"{domain}.json")

    def _load(self, domain: str) -> Policy | None:
        try:
            with open(self._path(domain), "rb") as handle:
                raw = json.loads(handle.read())
            return Policy(**{**raw, "mx": tuple(raw["mx"])})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as error:
            log.warn("MTA-STS: {path}: unreadable cached policy ({error}); fetching again",
                     path=self._path(domain), error=error)
            return None

    def _save(self, policy: Policy) -> None:
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        replace_file(self._path(policy.domain), json.dumps(asdict(policy)).encode(), mode=0o600)


class _Fixed:
    """An Agent endpoint factory that always connects where it was told (the address we resolved)."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 - Twisted's interface
        return self._endpoint


def _why(error: Exception) -> str:
    """One line: treq/Twisted wrap TLS and connection failures in lists of Failures."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(reason.getErrorMessage() for reason in reasons)
    return f"{type(error).__name__}: {error}"
