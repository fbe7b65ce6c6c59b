"""Two nodes (two gateways, or two workers) over one maildir_root: POP3's mailbox lock holds across them."""

from __future__ import annotations

import poplib
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.gateway import Gateway, free_port, gateway_config
from tests.support.nodes import kill_running

ALICE = "alice@example.test"


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    kill_running(made)


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


def test_two_nodes_deliver_into_one_shared_maildir_at_once(tmp_path: Path, nodes: list[Gateway]) -> None:
    """10 connections to each node at the same time, 2 messages each, one mailbox: 40 files, no 451
    (neither node's tmp/ sweep touches the other's files being written)."""
    import smtplib
    import threading

    shared = tmp_path / "shared-mail"
    first, second = node(tmp_path, "a", shared, nodes), node(tmp_path, "b", shared, nodes)
    failures: list[BaseException] = []

    def send(gateway: Gateway, tag: str) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
                for number in range(2):
                    client.sendmail("x@remote.test", [ALICE], f"Subject: {tag}{number}\r\n\r\nhi\r\n".encode())
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=send, args=(gateway, f"{name}{n}-"))
               for n in range(10) for name, gateway in (("a", first), ("b", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    new = shared / "example.test" / "alice" / "new"
    assert len(list(new.iterdir())) == 40
