"""Built-in plugin: `[dkim]`, mail from authenticated clients and `relay.allowed_networks` signed at the end of DATA.

As OpenDKIM does as a milter: the message is signed before it is stored
or queued, so every copy (relayed, handed to a gateway, delivered here)
carries the signature, once per key of its From: domain
(`<keys_dir>/<domain>/<selector>.pem`). It is asked after every other
`mailgate_message` plugin but the ones marked trylast, so it signs the
message as they left it. The signing itself (hashing, the private-key
operation) runs in the reactor's thread pool. Mailgate's own reports
(DSNs) are signed where they are written (mailgate.app.pipeline gives the
bounce sender a Signer of its own).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from mailgate import MessageChange, hookimpl
from mailgate.builtin.threads import InThreads, in_threads
from mailgate.config import GatewayConfig
from mailgate.core.session import Envelope
from mailgate.mailauth.dkim_sign import FIELD_NAME, Signer

PREFIX = FIELD_NAME + b": "


class DKIMSigning:
    def __init__(self) -> None:
        self._signer: Signer | None = None
        self._in_threads: InThreads | None = None

    @hookimpl
    def mailgate_configure(self, config: GatewayConfig, reactor: Any) -> None:
        self._signer = Signer(config.dkim) if config.dkim.sign == "authenticated" else None
        self._in_threads = in_threads(reactor)

    @hookimpl
    def mailgate_message(self, envelope: Envelope, message: bytes) -> Deferred[MessageChange | None] | None:
        if self._signer is None or self._in_threads is None or not envelope.may_relay:
            return None  # may_relay: an authenticated client, or one in relay.allowed_networks
        return self._in_threads(self._signer.fields, message).addCallback(_as_change)


def _as_change(fields: list[bytes]) -> MessageChange | None:
    if not fields:
        return None
    return MessageChange(headers=[("DKIM-Signature", field.removeprefix(PREFIX).rstrip(b"\r\n").decode("ascii"))
                                  for field in fields])
