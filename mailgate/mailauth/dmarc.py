"""DMARC (RFC 7489): the From: domain's policy, and whether SPF or DKIM passed for a domain aligned with it.

Organizational domains come from the Public Suffix List as the
`publicsuffixlist` package ships it (kept current by its releases), never
from a copy of our own. The policy is looked up at `_dmarc.<From domain>`,
then at `_dmarc.<organizational domain>` (RFC 7489 6.6.3), through
twisted.names like every lookup mailgate makes.

The result is `pass` (an aligned SPF or DKIM pass), `fail`, `none` (no
policy, or no single From: domain to check), `temperror` (the policy
lookup failed, or the only aligned results were temperrors: a failure
that may pass later is never reported, or enforced, as `fail`) or
`permerror` (From: names several domains). With the result goes the
policy that applies to this message (`p=`, or `sp=` for a subdomain
found through its organizational domain's record, after `pct=`
sampling, RFC 7489 6.6.4).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from publicsuffixlist import PublicSuffixList

from mailgate.mailauth.results import DKIMResult, DMARCResult, SPFResult
from mailgate.net.dns import LookupFailed, Lookups, NoSuchName, lookup_txt

POLICIES = ("none", "quarantine", "reject")
_VERSION = re.compile(rb"v\s*=\s*DMARC1\s*(?:;|$)")


class OrganizationalDomains:
    """The organizational domain of a name (RFC 7489 3.2): the public suffix and one label more."""

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._list = PublicSuffixList()  # the bundled list; an unknown TLD counts as a public suffix
        # asked 3-4 times per message (discovery, alignment): kept
        self.of = functools.lru_cache(maxsize=self.MAX_ENTRIES)(self._of)

    def _of(self, domain: str) -> str:
        return self._list.privatesuffix(domain) or domain


@dataclass(frozen=True)
class Policy:
    """A DMARC record's tags that decide a result (reports are not sent: rua/ruf are not read)."""

    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@functools.lru_cache(maxsize=1024)  # a Policy is frozen: the same record's is shared
def parse_policy(record: bytes) -> Policy | None:
    """The policy of one TXT record, or None when it is not a usable DMARC record (RFC 7489 6.3, 6.6.3)."""
    if not _VERSION.match(record):
        return None
    tags: dict[str, str] = {}
    for part in record.decode("ascii", "replace").split(";")[1:]:
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    p, sp = tags.get("p", "").lower(), tags.get("sp", "").lower()
    if p not in POLICIES or (sp and sp not in POLICIES):
        if "rua" not in tags:
            return None
        p, sp = "none", ""  # a record with reports but no valid policy: as p=none (6.6.3)
    pct = tags.get("pct", "100")
    return Policy(
        p=p, sp=sp or p,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=int(pct) if pct.isdigit() and int(pct) <= 100 else 100,
    )


async def find_policy(lookups: Lookups, from_domain: str, organizational: str) -> tuple[Policy, str] | None:
    """(the policy, the domain whose record it is) or None; LookupFailed when a lookup failed."""
    for domain in dict.fromkeys((from_domain, organizational)):
        try:
            records = await lookup_txt(lookups, f"_dmarc.{domain}")
        except NoSuchName:
            records = []
        policies = [policy for record in records if (policy := parse_policy(record)) is not None]
        if len(policies) == 1:
            return policies[0], domain
        if policies:  # several records: no DMARC processing (6.6.3)
            return None
    return None


@dataclass(frozen=True)
class Discovery:
    """Policy discovery's outcome for one message: a result already (no policy, several From: domains,
    a failed lookup), or the policy and where it was found."""

    from_domain: str
    decided: DMARCResult | None = None
    policy: Policy | None = None
    found_at: str = ""


async def discover(lookups: Lookups, organizational: OrganizationalDomains,
                   from_domains: Sequence[str]) -> Discovery:
    """The From: domain's policy (RFC 7489 6.6.3); runs beside SPF and DKIM, needing neither."""
    if len(from_domains) != 1:
        if not from_domains:
            return Discovery("", DMARCResult("none", "", reason="no From: domain"))
        joined = ",".join(from_domains)
        return Discovery(joined, DMARCResult("permerror", joined, reason="From: names several domains"))
    from_domain = from_domains[0]
    try:
        found = await find_policy(lookups, from_domain, organizational.of(from_domain))
    except LookupFailed as error:
        return Discovery(from_domain, DMARCResult("temperror", from_domain, reason=str(error)))
    if found is None:
        return Discovery(from_domain, DMARCResult("none", from_domain))
    return Discovery(from_domain, policy=found[0], found_at=found[1])


def evaluate(discovery: Discovery, organizational: OrganizationalDomains, spf: SPFResult | None,
             dkim: Sequence[DKIMResult], sample: Callable[[], float] = random.random) -> DMARCResult:
    """DMARC's result (RFC 7489 6.6.2, 6.6.4) from the discovered policy and the SPF and DKIM results."""
    if discovery.decided is not None or discovery.policy is None:
        return discovery.decided or DMARCResult("none", discovery.from_domain)
    policy, from_domain = discovery.policy, discovery.from_domain
    org = organizational.of(from_domain)
    applies = policy.p if discovery.found_at == from_domain else policy.sp

    def aligned(domain: str, mode: str) -> bool:
        return domain == from_domain if mode == "s" else bool(domain) and organizational.of(domain) == org

    spf_aligned = [spf] if spf is not None and aligned(spf.domain, policy.aspf) else []
    dkim_aligned = [result for result in dkim if aligned(result.domain, policy.adkim)]
    checked: list[SPFResult | DKIMResult] = [*spf_aligned, *dkim_aligned]
    words = {result.result for result in checked}
    if "pass" in words:
        return DMARCResult("pass", from_domain, applies)
    if "temperror" in words:
        return DMARCResult("temperror", from_domain, applies, "an aligned check could not complete")
    if policy.pct < 100 and sample() * 100 >= policy.pct:
        applies = {"reject": "quarantine", "quarantine": "none"}.get(applies, applies)  # outside pct= (6.6.4)
    return DMARCResult("fail", from_domain, applies)
