"""SRS, the Sender Rewriting Scheme (Shevek's guarded scheme, as libsrs2): forwarded mail's envelope sender and its way back.

Mail that mailgate forwards to another server leaves with a sender of
ours, `SRS0=HASH=TT=orig-domain=orig-local@<srs.domain>`, so the next
server's SPF check sees our domain, and its bounces come back to us:
HASH is a keyed hash of the rest (the secret is `srs.secret`), TT the day
it was made. A sender that is an SRS address already (another forwarder's)
becomes `SRS1=HASH=first-hop=...@<srs.domain>`, whose bounces go back to
that first hop. Reversing checks the hash, and for SRS0 that the address
is under 21 days old; anything else is not an address of ours.

The scheme is srslib's (PyPI `srslib`: small, maintained, the libsrs2
defaults: a 4-character HMAC-SHA1 hash, base-32 day stamps). One change:
srslib writes its hash in standard base64, with "+" and "/", and mailgate
(as many servers do) refuses "/" in an address, so about one rewritten
sender in sixteen could never be answered. Our hash uses the URL-safe
alphabet ("-", "_") instead; only we ever check it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Callable

import srslib  # type: ignore[import-untyped]  # srslib ships no type information

VALIDITY_DAYS = 21
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1: a longer rewritten sender could not come back
_PREFIXES = ("srs0=", "srs0-", "srs0+", "srs1=", "srs1-", "srs1+")


class NotOurs(ValueError):
    """Not an SRS address we made: forged, damaged, expired, or another server's."""


class _URLSafeSRS(srslib.SRS):
    def generate_hash(self, s: str, secret: bytes, hash_length: int) -> str:
        digest = hmac.new(secret, s.lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.urlsafe_b64encode(digest)[:hash_length].decode("ascii")


class SenderRewriting:
    """SRS addresses at `domain`, keyed by `secret`; `now` (unix seconds) is for tests."""

    def __init__(self, secret: str, domain: str, now: Callable[[], float] = time.time) -> None:
        self.domain = domain.lower()
        self._srs = _URLSafeSRS(secret, validity_days=VALIDITY_DAYS)
        self._srs._time_fn = now  # srslib's hook for the time (documented there as the testing one)

    def is_srs(self, address: str) -> bool:
        """Whether `address` is one of ours by its form: SRS0=/SRS1= at our domain (valid or not)."""
        local, _, domain = address.rpartition("@")
        return domain.lower() == self.domain and local.lower().startswith(_PREFIXES)

    def forward(self, sender: str) -> str | None:
        """The rewritten sender, or None when it should stay: the null sender, one of ours, or too long."""
        if not sender or "@" not in sender or self.is_srs(sender):
            return None
        rewritten = str(self._srs.forward(sender, self.domain))
        return rewritten if len(rewritten.rpartition("@")[0]) <= MAX_LOCAL_PART else None

    def reverse(self, address: str) -> str:
        """The address mail to `address` goes to (the original sender, or the first hop's SRS0); NotOurs."""
        if not self.is_srs(address):
            raise NotOurs(f"not an SRS address at {self.domain}")
        try:
            original = str(self._srs.reverse(address))
        except srslib.Error as error:
            raise NotOurs(str(error)) from None
        local, _, domain = original.rpartition("@")  # no "@": local is ""
        if not local or not domain:
            raise NotOurs(f"no address inside {address}")
        return original.lower()
