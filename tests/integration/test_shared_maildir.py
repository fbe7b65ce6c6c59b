"""Two nodes (two gateways, or two workers) over one maildir_root: POP3's mailbox lock holds across them."""

from __future__ import annotations

import poplib
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import Gateway, free_port, gateway_config

ALICE = "alice@example.test"


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gateway in made:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


def node(tmp_path: Path, name: str, maildir_root: Path, made: list[Gateway]) -> Gateway:
    root = tmp_path / name
    (root / "etc").mkdir(parents=True)
    ports = {"smtp": free_port(), "pop3": free_port()}
    extra = f'[store]\nmaildir_root = "{maildir_root}"\n[security]\nplaintext_auth = "always"\n'
    (root / "mailgate.toml").write_text(gateway_config(ports, extra))
    gateway = Gateway(root, root / "mailgate.toml", ports)
    made.append(gateway)
    gateway.add_user(ALICE)
    return gateway.start()


def login(gateway: Gateway) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    client.user(ALICE)
    client.pass_("secret")
    return client


def test_a_pop3_session_on_one_node_locks_the_mailbox_on_the_other(tmp_path: Path, nodes: list[Gateway]) -> None:
    shared = tmp_path / "shared-mail"
    first, second = node(tmp_path, "a", shared, nodes), node(tmp_path, "b", shared, nodes)
    session = login(first)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        login(second)
    session.quit()
    login(second).quit()  # the lock went with the session
