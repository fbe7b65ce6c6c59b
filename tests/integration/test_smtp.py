"""End to end: a real `twistd mailgate` process, smtplib over loopback, real Maildirs."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.gateway import BIN, Gateway, wait_for

ALICE = "alice@example.test"


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    gw = make_gateway(("smtp",))
    gw.add_user(ALICE)
    return gw.start()


def send(gateway: Gateway, body: bytes, rcpts: list[str] = [ALICE], sender: str = "bob@remote.test") -> dict:
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        return client.sendmail(sender, rcpts, body)


def stored_body(path: Path) -> bytes:
    """The message as stored, without the two trace lines mailgate prepends, nor the
    Authentication-Results field its checks add below them (the client is not authenticated)."""
    data = path.read_bytes()
    assert data.startswith(b"Return-Path: <")
    received = data.index(b"\nReceived: ") + 1
    end_of_trace = data.index(b"\n", data.index(b";\n\t", received) + 3) + 1
    if data.startswith(b"Authentication-Results: mx.example.test;", end_of_trace):
        end_of_trace = re.compile(rb"\n(?![ \t])").search(data, end_of_trace).end()  # type: ignore[union-attr]
    return data[end_of_trace:]


def test_message_reaches_maildir_byte_for_byte(gateway: Gateway) -> None:
    """Dot lines, 8-bit UTF-8 and CRLF: stored with LF ends, otherwise identical."""
    body = (
        "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n"
        "Grüße aus Köln — ünïcödé\r\nlast line\r\n"
    ).encode("utf-8")
    assert send(gateway, body) == {}
    [path] = gateway.new_messages(ALICE)
    assert stored_body(path) == body.replace(b"\r\n", b"\n")
    head = path.read_bytes().split(b"\n", 2)
    assert head[0] == b"Return-Path: <bob@remote.test>"
    assert head[1].startswith(b"Received: from ")
    assert b"by mx.example.test (mailgate)" in path.read_bytes()
    assert not list((gateway.mailbox(ALICE) / "tmp").iterdir())


def test_five_megabyte_message(gateway: Gateway) -> None:
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (5_000_000 // len(line))
    assert send(gateway, body) == {}
    [path] = gateway.new_messages(ALICE)
    assert stored_body(path) == body.replace(b"\r\n", b"\n")
    size = path.stat().st_size
    lines = path.read_bytes().count(b"\n")
    assert path.name.endswith(f",S={size},W={size + lines}")


def test_unknown_local_user_is_refused(gateway: Gateway) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gateway, b"Subject: x\r\n\r\nhi\r\n", ["nobody@example.test"])
    code, text = refused.value.recipients["nobody@example.test"]
    assert (code, text[:5]) == (550, b"5.1.1")


def test_relay_attempt_is_refused(gateway: Gateway) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(gateway, b"Subject: x\r\n\r\nhi\r\n", ["victim@elsewhere.test"])
    code, text = refused.value.recipients["victim@elsewhere.test"]
    assert (code, text[:5]) == (554, b"5.7.1")


def test_user_added_while_running_receives_mail(gateway: Gateway) -> None:
    """The users file is re-read on change: no restart needed."""
    gateway.add_user("carol@example.test")
    assert send(gateway, b"Subject: new\r\n\r\nwelcome\r\n", ["carol@example.test"]) == {}
    assert len(gateway.new_messages("carol@example.test")) == 1


def test_two_recipients_one_transaction(gateway: Gateway) -> None:
    gateway.add_user("dave@example.test")
    assert send(gateway, b"Subject: both\r\n\r\nhi\r\n", [ALICE, "dave@example.test"]) == {}
    [a] = gateway.new_messages(ALICE)
    [d] = gateway.new_messages("dave@example.test")
    assert a.read_bytes() == d.read_bytes()


def test_kill_9_right_after_250_loses_nothing(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.ehlo()
        client.mail("bob@remote.test")
        client.rcpt(ALICE)
        code, _ = client.data(b"Subject: durable\r\n\r\nsurvives\r\n")
        assert code == 250
        gateway.stop(signal.SIGKILL)
    [path] = gateway.new_messages(ALICE)
    assert stored_body(path) == b"Subject: durable\n\nsurvives\n"


def test_sigterm_during_data_answers_421_and_stores_nothing(gateway: Gateway) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=30)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"220")
    sock.sendall(b"HELO c.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    replies = [reader.readline()[:3] for _ in range(4)]
    assert replies == [b"250", b"250", b"250", b"354"]
    sock.sendall(b"Subject: half\r\n\r\nthe first half of a message\r\n")
    status = gateway.stop(signal.SIGTERM)
    assert reader.readline().startswith(b"421 4.3.2")
    sock.close()
    assert status == -signal.SIGTERM  # twistd re-raises SIGTERM after a clean shutdown
    assert gateway.new_messages(ALICE) == []
    assert not list(gateway.root.glob("var/mail/*/*/tmp/*"))
    assert "mailgate stopped cleanly" in gateway.log()


def test_sigterm_when_idle_is_a_clean_stop(gateway: Gateway) -> None:
    assert send(gateway, b"Subject: before\r\n\r\nx\r\n") == {}
    assert gateway.stop(signal.SIGTERM) == -signal.SIGTERM
    assert "mailgate stopped cleanly" in gateway.log()
    assert len(gateway.new_messages(ALICE)) == 1


def test_bad_config_stops_startup_with_one_line_per_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[[listen]]\nname = "mx"\nprotocol = "smtp"\nendpoint = "tcp:25:interface=127.0.0.1"\n'
        '[[listen]]\nname = "x"\nprotocol = "smtp"\nendpoint = "nonsense:what"\n'
        '[limits]\nmax_message_size = "lots"\n'
    )
    result = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "mailgate", "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("listen[1].endpoint: ") for line in lines), result.stderr
    assert any(line.startswith("limits.max_message_size: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_port_in_use_is_one_clear_line(make_gateway) -> None:
    gateway = make_gateway(("smtp",))
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", gateway.ports["smtp"]))
        blocker.listen()
        result = subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile=", "mailgate", "--config", str(gateway.config)],
            cwd=gateway.root, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode != 0
    assert "listen[0].endpoint: cannot listen" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_default_config_starts(tmp_path: Path) -> None:
    """etc/mailgate.toml as shipped works on a fresh machine, certificate included."""
    shipped = Path(__file__).resolve().parents[2] / "etc" / "mailgate.toml"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mailgate.toml").write_bytes(shipped.read_bytes())
    gateway = Gateway(tmp_path, tmp_path / "etc" / "mailgate.toml", {"mx": 2525, "pop3": 1100})
    gateway.process = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(gateway.log_path), "mailgate"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(gateway._started, 30, "the default configuration to start")
        assert (tmp_path / "var" / "tls" / "cert.pem").exists()
        assert "self-signed" in gateway.log()
        with smtplib.SMTP("127.0.0.1", 2525, timeout=30) as client:
            client.ehlo()
            assert client.has_extn("starttls")
    finally:
        assert gateway.stop() == -signal.SIGTERM
