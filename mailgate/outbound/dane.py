"""DANE for SMTP (RFC 7672): placeholder, filled in by the next commit."""

from __future__ import annotations

from typing import Any


class DANE:
    async def host_tls(self, host: str, port: int) -> Any:
        return None
