"""Certificates by name (SNI, RFC 6066 3): which pair a client that asks for a host name is served.

The `[tls]` pair's context is the one every handshake starts with; a
servername callback on it switches the connection to the context of the
`[tls.sni."HOSTNAME"]` pair matching the name the client asked for
(exactly, or `*.domain` for one label more), before any certificate is
sent. No match, or no name: the `[tls]` pair.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from OpenSSL import SSL
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOProtocol

MAX_NAME = 253
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def match(requested: str | None, names: Mapping[str, object] | set[str]) -> str | None:
    """The configured name (`mail.example.org` or `*.example.org`) that `requested` falls under."""
    if not requested or len(requested) > MAX_NAME:
        return None
    name = requested.lower().rstrip(".")
    if name in names:
        return name
    _label, dot, parent = name.partition(".")
    wildcard = f"*.{parent}"
    return wildcard if dot and parent and wildcard in names else None


def serve_by_name(default: CertificateOptions, by_name: Mapping[str, CertificateOptions]) -> None:
    """Let `default`'s context hand each connection to the context of the name it asks for."""
    if not by_name:
        return
    contexts = {name: options.getContext() for name, options in by_name.items()}

    def choose(connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        chosen = match(raw.decode("ascii", "replace") if raw else None, contexts)
        if chosen is not None:
            connection.set_context(contexts[chosen])

    default.getContext().set_tlsext_servername_callback(choose)


def host_name(transport: object, names: Mapping[str, object], hostname: str) -> str:
    """The name a server greets with on this connection: the one the client asked for when
    a pair is served for it (a wildcard's match too: a valid name, one label more), else `hostname`."""
    requested = requested_name(transport)
    if requested is not None and match(requested, names) is not None and _HOST.fullmatch(requested):
        return requested
    return hostname


def requested_name(transport: object) -> str | None:
    """The host name the client asked for in its TLS handshake (lower-case), if it asked for one.

    The TLS layer is the transport itself (implicit TLS) or, after
    STARTTLS, the protocol Twisted put under the TCP transport.
    """
    for candidate in (transport, getattr(transport, "protocol", None)):
        if isinstance(candidate, TLSMemoryBIOProtocol):
            handle = candidate.getHandle()
            raw = handle.get_servername() if isinstance(handle, SSL.Connection) else None
            return raw.decode("ascii", "replace").lower().rstrip(".") if raw else None
    return None
