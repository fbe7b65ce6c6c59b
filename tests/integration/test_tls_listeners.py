"""TLS as a real `twistd mailgate` serves it: the suites offered, and the certificate pair it loads or makes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.gateway import Gateway, free_port, tls12_handshake


def pop3s(make_gateway: Callable[..., Gateway], tls: str = "") -> Gateway:
    """A gateway with one implicit-TLS POP3 listener, not started; `tls` goes in its [tls] table."""
    port = free_port()
    listeners = f'[[listen]]\nname = "pop3s"\nprotocol = "pop3"\nendpoint = "tcp:{port}:interface=127.0.0.1"\n' \
                f'tls = "implicit"\n\n[tls]\n{tls}\n'
    gateway = make_gateway((), listeners=listeners)
    gateway.ports = {"pop3s": port}
    return gateway


@pytest.mark.parametrize("suite", ["AES128-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"])
def test_default_refuses_suites_without_forward_secrecy_or_aead(make_gateway, suite: str) -> None:
    gateway = pop3s(make_gateway).start()
    assert tls12_handshake(gateway.ports["pop3s"], suite) == "refused"
    assert tls12_handshake(gateway.ports["pop3s"], "ECDHE-RSA-AES128-GCM-SHA256") == "ECDHE-RSA-AES128-GCM-SHA256"


def test_legacy_ciphers_serve_old_clients(make_gateway) -> None:
    gateway = pop3s(make_gateway, 'ciphers = "legacy"').start()
    assert tls12_handshake(gateway.ports["pop3s"], "AES128-SHA") == "AES128-SHA"
    assert tls12_handshake(gateway.ports["pop3s"], "AES128-GCM-SHA256") == "AES128-GCM-SHA256"
