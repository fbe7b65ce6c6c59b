"""SASL responses and the PLAIN mechanism (RFC 4616), one parser for SMTP AUTH and POP3 AUTH.

Both protocols carry a response as one base64 line (RFC 4954 section 4,
RFC 5034 section 4): "*" cancels the exchange and "=" is an empty initial
response. What the PLAIN message must hold is RFC 4616 section 2.
"""

from __future__ import annotations

import base64
import binascii


class SASLCancelled(Exception):
    """The client answered with '*' (RFC 4954 section 4, RFC 5034 section 4)."""


class SASLMalformed(Exception):
    """A response that is not valid base64 or not a valid PLAIN message."""


class SASLBadBase64(SASLMalformed):
    """The response is not base64."""


class SASLAuthzidRefused(SASLMalformed):
    """PLAIN asked to act as another user (an authzid other than the authcid): not permitted here."""


def decode_response(line: str | bytes) -> bytes:
    """The decoded bytes of a client's response line; SASLCancelled for "*"."""
    response = line.strip()
    if response in ("*", b"*"):
        raise SASLCancelled()
    if response in ("=", b"="):
        return b""  # an empty initial response (RFC 4954 and 5034 section 4)
    try:
        return base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a str that is not ASCII
        raise SASLBadBase64() from None


def parse_plain(message: bytes) -> tuple[str, str]:
    """(authcid, passwd) of a PLAIN message: [authzid] NUL authcid NUL passwd.

    RFC 4616 section 2: all three are UTF-8, authcid and passwd are not
    empty. An authzid must be empty or name the authcid itself (compared
    case-insensitively, as addresses are); acting as another user is refused.
    """
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SASLMalformed()
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise SASLMalformed() from None
    if not authcid or not password:
        raise SASLMalformed()
    if authzid and authzid.lower() != authcid.lower():
        raise SASLAuthzidRefused()
    return authcid, password
