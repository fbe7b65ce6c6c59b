"""Password guessing: failed logins counted per (client IP, account) and per client IP, for SMTP AUTH and POP3.

One AuthThrottle serves the whole server, so guesses spread over the SMTP,
submission and POP3 ports count together, and they span connections:
opening a new session resets nothing.

Failures are keyed by the pair (IP, account) first. Five bad passwords for
one account from one address (`limits.auth_failures_per_account`) lock that
pair out for the rest of `limits.auth_penalty`, and the answer to each
failure is delayed, doubling per recent failure of the pair (1, 2, 4, 8 s).
Everyone else behind the same address (a NAT, an office) keeps logging in
to their own accounts; only a far higher number of failures from the
address, whatever the accounts (`limits.auth_failures_per_ip`), locks the
address out as a whole. A success clears its pair only: an attacker holding
one valid account cannot wipe the address's count with it.

Delaying the answer alone slows nobody who does not wait for it: a client
that gave up after half a second and tried again had its next password
checked at once. So, as Dovecot's auth penalty does, the penalty holds for
the attempt, not the answer (`admit`): until the delay of the pair's latest
failure has passed, and while the pair or the address is locked out, an
attempt is refused at once, its password never checked, the same answer
whether it was right or wrong. Passwords being checked count against the
limits too, so parallel connections cannot have more checked than the
limits leave.
"""

from __future__ import annotations

from collections import deque
from typing import Hashable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailgate.config import LimitsConfig

log = Logger()

MAX_ACCOUNT_KEY = 256  # an account name is kept no longer than this: memory, not meaning


def account_key(account: str) -> str:
    """The account a failure counts against: case and surrounding space do not make another one."""
    return account.strip().lower()[:MAX_ACCOUNT_KEY]


def for_log(text: str) -> str:
    """A client-chosen name as one log token: escaped, so it cannot forge fields or lines."""
    return text[:64].encode("unicode_escape").decode("ascii").replace(" ", "\\x20") or "''"


class _Failures:
    """Times of recent failures per key, forgetting those older than the window and the least recent keys."""

    def __init__(self, clock: IReactorTime, window_seconds: float, keep: int, max_keys: int) -> None:
        self._clock = clock
        self._window = window_seconds
        self._keep = keep
        self._max_keys = max_keys
        self._times: dict[Hashable, deque[float]] = {}

    def add(self, key: Hashable) -> None:
        times = self._times.pop(key, None) or deque(maxlen=self._keep)
        times.append(self._clock.seconds())
        self._times[key] = times  # re-inserted: dict order = least recently failed first
        while len(self._times) > self._max_keys:
            del self._times[next(iter(self._times))]  # bounded under a scan

    def clear(self, key: Hashable) -> None:
        self._times.pop(key, None)

    def recent(self, key: Hashable) -> deque[float]:
        """The key's failures within the window, oldest first."""
        times = self._times.get(key)
        if not times:
            return deque()
        horizon = self._clock.seconds() - self._window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._times[key]
        return times


class AuthThrottle:
    """Failed logins per (IP, account) and per IP within a window, and what they cost the client."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        failures_per_account: int = 5,
        failures_per_ip: int = 100,
        penalty_seconds: float = 300.0,
        max_delay_seconds: float = 8.0,
        max_tracked: int = 10_000,
    ) -> None:
        self._clock: IReactorTime = clock
        self._per_account = failures_per_account
        self._per_ip = failures_per_ip
        self._max_delay = max_delay_seconds
        self._pairs = _Failures(clock, penalty_seconds, max(failures_per_account, 16), max_tracked)
        self._ips = _Failures(clock, penalty_seconds, failures_per_ip, max_tracked)
        self._checking: dict[Hashable, int] = {}  # (ip, account) and ip -> passwords being checked

    @classmethod
    def from_limits(cls, limits: LimitsConfig, clock: IReactorTime) -> AuthThrottle:
        return cls(clock, failures_per_account=limits.auth_failures_per_account,
                   failures_per_ip=limits.auth_failures_per_ip, penalty_seconds=limits.auth_penalty_seconds)

    def record_failure(self, ip: str, account: str) -> None:
        """Count a wrong password for `account` from `ip`, unlogged (the protocol logs it, naming its listener)."""
        self._pairs.add((ip, account_key(account)))
        self._ips.add(ip)

    def admit(self, ip: str, account: str, protocol: str) -> bool:
        """Whether to check this attempt's password at all (logged when not). An admitted attempt
        counts as being checked until `release`, whatever its outcome."""
        pair = (ip, account_key(account))
        times = self._pairs.recent(pair)
        checking_pair, checking_ip = self._checking.get(pair, 0), self._checking.get(ip, 0)
        in_penalty = bool(times) and self._clock.seconds() < times[-1] + self._delay(len(times))
        if (in_penalty or len(times) + checking_pair >= self._per_account
                or len(self._ips.recent(ip)) + checking_ip >= self._per_ip):
            log.info("auth refused: ip={ip} user={user} protocol={protocol} (too many failures, not checked)",
                     ip=ip, user=for_log(account), protocol=protocol)
            return False
        self._checking[pair], self._checking[ip] = checking_pair + 1, checking_ip + 1
        return True

    def release(self, ip: str, account: str) -> None:
        """The admitted attempt's check is over (after record_failure or record_success, if any)."""
        for key in ((ip, account_key(account)), ip):
            left = self._checking.get(key, 0) - 1
            if left > 0:
                self._checking[key] = left
            else:
                self._checking.pop(key, None)

    def record_success(self, ip: str, account: str) -> None:
        self._pairs.clear((ip, account_key(account)))

    def failures(self, ip: str, account: str | None = None) -> int:
        """Recent failures of the pair (IP, account), or of the IP for every account."""
        if account is None:
            return len(self._ips.recent(ip))
        return len(self._pairs.recent((ip, account_key(account))))

    def delay_seconds(self, ip: str, account: str) -> float:
        """How long to wait before answering the pair's latest failure: doubling, capped."""
        return self._delay(self.failures(ip, account))

    def _delay(self, count: int) -> float:
        return float(min(2 ** (count - 1), self._max_delay)) if count else 0.0

    def locked_out(self, ip: str, account: str) -> bool:
        """The pair, or the whole address, is at its limit: no more attempts until failures age out."""
        return self.failures(ip, account) >= self._per_account or self.failures(ip) >= self._per_ip
