"""The keys of [dkim], [authentication] and [srs] (mail authentication, SPEC 0.2), and their checks."""

from __future__ import annotations

from typing import Any

from mailgate.config.checks import Key, choice, domain, header_name, list_of, parse_duration, positive, string, text
from mailgate.config.model import AUTHENTICATION_CHECKS

_DURATION = positive(parse_duration)

# RFC 6376 5.4: fields that change in transit, or another signature, are never signed.
_NEVER_SIGNED = frozenset({"return-path", "received", "dkim-signature", "bcc", "resent-bcc", "comments",
                           "keywords", "authentication-results"})
SRS_SECRET_MIN_CHARS = 16  # the secret keys the hash in every SRS address: not a word


def _signed_headers(value: Any) -> tuple[str, ...]:
    """Header field names to sign; From is always signed, so it is added when missing."""
    names = list_of(header_name)(value)
    never = sorted(set(names) & _NEVER_SIGNED)
    if never:
        raise ValueError(f"{', '.join(never)} must not be signed (RFC 6376 5.4: they change in transit)")
    return ("from", *dict.fromkeys(name for name in names if name != "from"))


def _checks(value: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(list_of(choice(*AUTHENTICATION_CHECKS))(value)))


def _domain_or_empty(value: Any) -> str:
    """A domain name, or "" for the default (server.hostname)."""
    return string(value) and domain(value)


def _srs_secret(value: Any) -> str:
    if string(value) and len(value) < SRS_SECRET_MIN_CHARS:
        raise ValueError(f"too short for a secret: use {SRS_SECRET_MIN_CHARS} characters or more "
                         "(e.g. from `openssl rand -base64 24`)")
    return value


DKIM_KEYS = {
    "keys_dir": Key(text),
    "sign": Key(choice("authenticated", "off")),
    "headers": Key(_signed_headers),
}
AUTHENTICATION_KEYS = {
    "checks": Key(_checks),
    "dns_timeout": Key(_DURATION, "dns_timeout_seconds"),
    "authserv_id": Key(_domain_or_empty),  # "" = server.hostname
    "dmarc": Key(choice("report", "enforce")),
}
SRS_KEYS = {
    "secret": Key(_srs_secret),  # "" = no SRS
    "domain": Key(_domain_or_empty),  # "" = server.hostname
}
