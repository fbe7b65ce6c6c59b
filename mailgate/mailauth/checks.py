"""The inbound checks of one message: SPF, DKIM and DMARC at once, within one time limit.

The three start together (SPF's lookups, the DKIM keys, the DMARC policy
are independent); DMARC is decided when the other two are in. A check
that has not finished when `time_limit_seconds` is up is `temperror`:
each lookup already has `authentication.dns_timeout`, and the limit
bounds a chain of them (SPF's includes), so the client always has its
answer before the plugin's own time limit would fail the message.
DMARC needs SPF and DKIM, so with `dmarc` among the checks both are
evaluated, whether or not they are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeoutError

from mailgate.mailauth.dkim_verify import RunInThread, check_dkim
from mailgate.mailauth.dmarc import Discovery, OrganizationalDomains, discover, evaluate
from mailgate.mailauth.headers import from_domains, header_fields
from mailgate.mailauth.results import DKIMResult, DMARCResult, Results, SPFResult
from mailgate.mailauth.spf import check_spf, spf_identity
from mailgate.net.dns import Lookups

T = TypeVar("T")


@dataclass(frozen=True)
class Checker:
    lookups: Lookups
    checks: tuple[str, ...]  # of spf, dkim, dmarc
    organizational: OrganizationalDomains
    run_in_thread: RunInThread
    time_limit_seconds: float

    async def check(self, client_ip: str, mail_from: str, helo: str, message: bytes) -> Results:
        dmarc = "dmarc" in self.checks
        spf = self._start(check_spf(self.lookups, client_ip, mail_from, helo)) if dmarc or "spf" in self.checks \
            else None
        fields = header_fields(message)  # read once: DKIM's signatures and DMARC's From: are both in it
        dkim = self._start(check_dkim(self.lookups, message, self.run_in_thread, fields)) \
            if dmarc or "dkim" in self.checks else None
        authors = from_domains(message, fields)
        policy = self._start(discover(self.lookups, self.organizational, authors)) if dmarc else None
        identity = spf_identity(mail_from, helo)
        spf_result = await _within(spf, lambda: SPFResult("temperror", *identity, "time limit")) if spf else None
        dkim_results = await _within(dkim, lambda: (DKIMResult("temperror", "", "", "time limit"),)) \
            if dkim else None
        dmarc_result = None
        if policy is not None:
            author = ",".join(authors)
            discovery = await _within(policy, lambda: Discovery(author, DMARCResult("temperror", author,
                                                                                    reason="time limit")))
            dmarc_result = evaluate(discovery, self.organizational, spf_result, dkim_results or ())
        return Results(
            spf=spf_result if "spf" in self.checks else None,
            dkim=dkim_results if "dkim" in self.checks else None,
            dmarc=dmarc_result,
        )

    def _start(self, work: Awaitable[T]) -> Deferred[T]:
        started: Deferred[T] = Deferred.fromCoroutine(work)  # type: ignore[arg-type]
        if started.called:  # done already (every answer was cached): no timer to set and cancel
            return started
        return started.addTimeout(self.time_limit_seconds, self.lookups.clock)


async def _within(started: Deferred[Any], on_timeout: Callable[[], T]) -> T:
    try:
        result: T = await started
    except DeferredTimeoutError:
        return on_timeout()
    return result
