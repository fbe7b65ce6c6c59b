"""Reload on a real `twistd mailgate`: SIGHUP and `mailgate reload` apply a new configuration to new
sessions, sessions in flight finish on theirs, a bad file changes nothing, and a renewed certificate
is served without a restart."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

from mailgate.net.tls import ensure_certificate
from tests.support.gateway import BIN, Gateway, client_tls, gateway_config, wait_for

ALICE, BOB, OLD = "alice@example.test", "bob@example.test", "old@example.test"
FORWARD = f'\n[[forward]]\nmatch = "{OLD}"\nto = ["{BOB}"]\n'


def applied(gateway: Gateway, generation: int) -> None:
    wait_for(lambda: f"applied: generation {generation} " in gateway.log(), 15, f"generation {generation}")


def reconfigure(gateway: Gateway, extra: str) -> None:
    gateway.config.write_text(gateway_config(gateway.ports, extra))


def send(gateway: Gateway, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.sendmail("someone@remote.test", [recipient], b"Subject: hi\r\n\r\nhello\r\n")


def test_sighup_applies_a_new_forward_to_new_sessions_while_one_in_flight_keeps_its_rules(make_gateway) -> None:
    gateway = make_gateway()
    for user in (ALICE, BOB):
        gateway.add_user(user)
    gateway.start()
    assert gateway.process is not None
    pid = gateway.process.pid
    in_flight = smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30)
    in_flight.ehlo("early.test")
    assert in_flight.mail("someone@remote.test")[0] == 250
    assert in_flight.rcpt(ALICE)[0] == 250

    reconfigure(gateway, FORWARD + '\n[store]\nmaildir_root = "elsewhere"\n')
    os.kill(pid, signal.SIGHUP)
    applied(gateway, 2)
    assert "reload: store.maildir_root changed: that needs a restart; it keeps its running value" in gateway.log()
    send(gateway, OLD)  # a new session: the new rule
    wait_for(lambda: gateway.new_messages(BOB), 15, "the forwarded message in bob's Maildir")

    assert in_flight.rcpt(OLD)[0] == 550  # the session opened before: the rules it started with
    assert in_flight.data(b"Subject: early\r\n\r\nstarted before the reload\r\n")[0] == 250
    in_flight.quit()
    [message] = wait_for(lambda: gateway.new_messages(ALICE), 15, "the in-flight message in alice's Maildir")
    assert b"started before the reload" in message.read_bytes()
    assert not (gateway.root / "elsewhere").exists()
    assert gateway.process.poll() is None and gateway.process.pid == pid


def test_an_invalid_file_changes_nothing_and_says_why(make_gateway) -> None:
    gateway = make_gateway(extra=FORWARD)
    gateway.add_user(BOB)
    gateway.start()
    assert gateway.process is not None
    reconfigure(gateway, '\n[security]\nvrfy = "yes"\n[limits]\nmax_recipients = "lots"\n')
    os.kill(gateway.process.pid, signal.SIGHUP)
    wait_for(lambda: "reload refused" in gateway.log(), 15, "the reload to be refused")
    log = gateway.log()
    assert "reload: security.vrfy: expected one of off | authenticated | all, got 'yes'" in log
    assert "reload: limits.max_recipients: " in log
    assert "reload refused: the configuration in force (generation 1) is unchanged" in log
    send(gateway, OLD)  # the forward rule of the running configuration still works
    wait_for(lambda: gateway.new_messages(BOB), 15, "the forwarded message")
    assert gateway.process.poll() is None


def test_mailgate_reload_signals_the_server_through_its_pidfile(make_gateway) -> None:
    gateway = make_gateway()
    gateway.add_user(BOB)
    gateway.start(pidfile="twistd.pid")
    reconfigure(gateway, FORWARD)
    command = [str(BIN / "mailgate"), "--config", str(gateway.config), "reload"]
    done = subprocess.run(command, cwd=gateway.root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("reload: sent SIGHUP to mailgate (pid ")
    applied(gateway, 2)
    send(gateway, OLD)
    wait_for(lambda: gateway.new_messages(BOB), 15, "the forwarded message")
    missing = subprocess.run([*command, "--pidfile", "nope.pid"], cwd=gateway.root, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("mailgate: no pidfile ")


def served_certificate(port: int, starttls: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if starttls:
            raw.recv(1024)
            raw.sendall(b"EHLO c.test\r\n")
            while not raw.recv(4096).endswith(b"250 HELP\r\n"):
                pass
            raw.sendall(b"STARTTLS\r\n")
            raw.recv(1024)
        with client_tls().wrap_socket(raw) as tls:
            certificate = tls.getpeercert(binary_form=True)
            assert certificate is not None
            return certificate


def test_a_renewed_certificate_is_served_to_new_tls_sessions_without_a_restart(make_gateway, tmp_path: Path) -> None:
    listeners = "".join(
        f'[[listen]]\nname = "{name}"\nprotocol = "submission"\nendpoint = "tcp:{{{name}}}:interface=127.0.0.1"\n'
        f'tls = "{tls}"\nauth = "optional"\n\n' for name, tls in (("smtps", "implicit"), ("submission", "starttls")))
    gateway = make_gateway(("smtps", "submission"), listeners="")
    gateway.config.write_text(gateway_config(gateway.ports, "", listeners.format(**gateway.ports)))
    gateway.start()
    assert gateway.process is not None
    first = served_certificate(gateway.ports["smtps"])
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    ensure_certificate(str(renewed / "cert.pem"), str(renewed / "key.pem"), "renewed.example.test")
    tls_dir = gateway.root / "var" / "tls"
    os.replace(renewed / "key.pem", tls_dir / "key.pem")  # as certbot's deploy does: one file, then the other
    os.replace(renewed / "cert.pem", tls_dir / "cert.pem")
    new = ssl.PEM_cert_to_DER_cert((tls_dir / "cert.pem").read_text())
    assert new != first
    wait_for(lambda: served_certificate(gateway.ports["smtps"]) == new, 30, "the renewed certificate (implicit TLS)")
    assert served_certificate(gateway.ports["submission"], starttls=True) == new
    assert "tls: var/tls/cert.pem changed: new TLS sessions get the new certificate" in gateway.log()
    os.kill(gateway.process.pid, signal.SIGHUP)  # a reload reads the pair too, and keeps serving it
    applied(gateway, 2)
    assert served_certificate(gateway.ports["smtps"]) == new
