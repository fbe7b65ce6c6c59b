"""The TLS pair in force: read again when its files change (certbot renews in place) and at each reload.

A pair that does not load (the key not yet written beside a new
certificate, a broken file) is logged once and the one loaded before goes
on being served; it is tried again when the files change again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger

from mailgate.app import preflight
from mailgate.config import ConfigError, GatewayConfig
from mailgate.net.tls_reload import FileStamp, ReloadableTLS, file_stamps

log = Logger()

CHECK_SECONDS = 5.0  # a stat of two files: cheap enough to notice a renewal within seconds


class CertificateWatch:
    """Replaces `tls`'s options when the configured certificate or key file changes."""

    def __init__(self, tls: ReloadableTLS, config: Callable[[], GatewayConfig],
                 run_blocking: Callable[..., Deferred]) -> None:
        self._tls = tls
        self._config = config
        self._run_blocking = run_blocking  # the pair is read in the disk pool, never on the reactor
        self._loaded = self._stamps()
        self._refused: tuple[FileStamp, ...] | None = None  # the files as they were when they failed to load

    def _stamps(self) -> tuple[FileStamp, ...]:
        tls = self._config().tls  # the [tls.sni] pairs too: preflight.load_tls loads them all at once
        return file_stamps([tls.certificate, tls.key, *(path for pair in tls.sni.values()
                                                         for path in (pair.certificate, pair.key))])

    def check(self) -> Deferred | None:
        """Periodic: load the pair again if its files changed since it was loaded (or last refused)."""
        stamps = self._stamps()
        if stamps in (self._loaded, self._refused):
            return None
        return Deferred.fromCoroutine(self._load(stamps))

    async def _load(self, stamps: tuple[FileStamp, ...]) -> None:
        config = self._config()
        try:
            options: Any = await self._run_blocking(preflight.load_tls, config)
        except ConfigError as error:
            self._refused = stamps
            for problem in error.problems:
                log.error("tls: {problem}; new TLS sessions still get the certificate loaded before", problem=problem)
            return
        self.loaded(options, stamps)
        log.info("tls: {certificate} changed: new TLS sessions get the new certificate",
                 certificate=config.tls.certificate)

    def loaded(self, options: CertificateOptions, stamps: tuple[FileStamp, ...] | None = None) -> None:
        """`options` (a reload loaded them) are served from now on."""
        self._tls.replace(options)
        self._loaded, self._refused = stamps or self._stamps(), None
