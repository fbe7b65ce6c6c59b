"""A TLS context factory whose certificate can be replaced while listeners run, and the files' fingerprint.

Every listener, STARTTLS and implicit TLS alike, is given one
ReloadableTLS; each new handshake asks it for a context, and it answers
with the options in force, so a renewed certificate (certbot) is served to
new TLS sessions at once, while sessions already encrypted keep theirs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

FileStamp = tuple[int, int, int, int] | None  # device, inode, size, mtime in ns; None: missing


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    """Delegates to `current`, a Twisted context factory (CertificateOptions), which `replace` swaps."""

    def __init__(self, current: IOpenSSLContextFactory) -> None:
        self.current = current

    def replace(self, options: IOpenSSLContextFactory) -> None:
        self.current = options

    def getContext(self) -> SSL.Context:
        return self.current.getContext()  # CertificateOptions makes its context once and keeps it


def file_stamps(paths: Sequence[str]) -> tuple[FileStamp, ...]:
    """What changes when a file is rewritten or replaced (a new inode, as certbot's links do)."""
    stamps: list[FileStamp] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stamps)
