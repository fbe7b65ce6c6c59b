"""SASL responses and the PLAIN message (RFC 4954 4, RFC 4616), as SMTP AUTH reads them.

Moved unchanged out of the AUTH handler. The pop3-accounts branch adds
mailgate/accounts/sasl.py, one parser for SMTP and POP3 with these four
names: merging it means changing auth_command's one import of them and
deleting this module.
"""

from __future__ import annotations

import base64
import binascii


class SASLCancelled(Exception):
    """The client answered a challenge with '*' (RFC 4954 4)."""


class SASLMalformed(Exception):
    """A response that is not valid base64 or not a valid PLAIN message."""


def decode_response(line: str) -> bytes:
    if line.strip() == "*":
        raise SASLCancelled()
    try:
        return base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SASLMalformed() from None


def parse_plain(message: bytes) -> tuple[str, str]:
    """RFC 4616: authzid NUL authcid NUL passwd; authzid must be empty or the same user."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SASLMalformed()
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise SASLMalformed() from None
    if authzid and authzid.lower() != authcid.lower():
        raise SASLMalformed()
    return authcid, password
