"""Fixtures of the SMTP session tests: a server in memory and a client past EHLO."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from mailgate.accounts import users_file as users
from tests.support.smtp_session import Client, Server


@pytest.fixture(autouse=True)
def cheap_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users, "BCRYPT_ROUNDS", 4)


@pytest.fixture
def make_server(tmp_path: Path) -> Callable[..., Server]:
    return lambda *args, **kwargs: Server(tmp_path, *args, **kwargs)


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def client(server: Server) -> Client:
    c = server.connect()
    c.send(b"EHLO client.test\r\n")
    return c
