"""Dovecot-style users-file lines against a real `twistd mailgate`: POP3 logins, and the log when one can't work."""

from __future__ import annotations

import poplib

import bcrypt
import pytest

from tests.support.gateway import Gateway, free_port

argon2 = pytest.importorskip("argon2", reason="argon2-cffi is not installed: pip install -e .")


@pytest.fixture
def gateway(make_gateway, tmp_path) -> Gateway:
    port = free_port()
    listeners = f'[[listen]]\nname = "pop3"\nprotocol = "pop3"\nendpoint = "tcp:{port}:interface=127.0.0.1"\n\n'
    gw = make_gateway((), listeners=listeners, extra='[security]\nplaintext_auth = "always"\n')
    gw.ports = {"pop3": port}
    blf = "$2y$" + bcrypt.hashpw(b"blowfish", bcrypt.gensalt(rounds=4)).decode()[4:]
    argon = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("argon")
    (tmp_path / "etc" / "users").write_text(
        f"alice@example.test:{{BLF-CRYPT}}{blf}\n"
        f"bob@example.test:{{ARGON2ID}}{argon}::::/home/bob::\n"
        "carol@example.test:{SHA512-CRYPT}$6$abcdefgh$0123456789\n"
    )
    return gw.start()


def login(gateway: Gateway, user: str, password: str) -> bool:
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    try:
        client.user(user)
        client.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        client.quit()


def test_dovecot_prefixed_hashes_log_in(gateway: Gateway) -> None:
    assert login(gateway, "alice@example.test", "blowfish")
    assert login(gateway, "bob@example.test", "argon")
    assert not login(gateway, "bob@example.test", "blowfish")


def test_an_unsupported_scheme_is_one_log_line_for_any_number_of_logins(gateway: Gateway) -> None:
    for _ in range(3):
        assert not login(gateway, "carol@example.test", "anything")
    lines = [line for line in gateway.log().splitlines() if "carol@example.test has" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith("users.file: etc/users: carol@example.test has a {SHA512-CRYPT} hash, which mailgate "
                             "cannot check (it checks bcrypt and argon2): that account cannot log in")
