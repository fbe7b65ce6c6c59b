"""Shared fixtures: gateways built in a temporary directory, and fast password hashing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.gateway import Gateway, free_port, gateway_config


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Build (not start) gateways in tmp_path; every one started is stopped at the end."""
    made: list[Gateway] = []

    def make(names: tuple[str, ...] = ("smtp",), extra: str = "", listeners: str | None = None) -> Gateway:
        ports = {name: free_port() for name in names}
        config = tmp_path / "mailgate.toml"
        config.write_text(gateway_config(ports, extra, listeners))
        (tmp_path / "etc").mkdir(exist_ok=True)
        gateway = Gateway(tmp_path, config, ports)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


@pytest.fixture
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """bcrypt at cost 4 for in-process tests; files written by the CLI keep cost 12."""
    import mailgate.accounts.users_file

    monkeypatch.setattr(mailgate.accounts.users_file, "BCRYPT_ROUNDS", 4)
