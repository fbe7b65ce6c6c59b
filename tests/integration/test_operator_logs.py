"""The log of a real `twistd mailgate` as an operator (and fail2ban) reads it: refusals with the client's
IP, POP3 logins, one line per recipient and outcome, Twisted's noise left out, and `log.format = "json"`."""

from __future__ import annotations

import json
import poplib
import re
import smtplib
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, wait_for

ROOT = Path(__file__).resolve().parents[2]
ALICE = "alice@example.test"
PLAINTEXT_POP3 = '\n[security]\nplaintext_auth = "always"\n'


def fail2ban_patterns() -> list[re.Pattern[str]]:
    """The failregex lines of the filter in docs/operations.md, <HOST> made a group as fail2ban does."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text[text.index("failregex = "):text.index("ignoreregex =")]
    lines = [line.strip().removeprefix("failregex = ").strip() for line in block.splitlines() if line.strip()]
    return [re.compile(line.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)")) for line in lines]


def banned_hosts(log: str) -> list[str]:
    patterns = fail2ban_patterns()
    return [match["host"] for line in log.splitlines() for pattern in patterns if (match := pattern.search(line))]


def refuse_relay_and_unknown_user(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.ehlo("client.test")
        client.mail("someone@remote.test")
        assert client.rcpt("victim@elsewhere.test")[0] == 554
        assert client.rcpt("nobody@example.test")[0] == 550


def test_refusals_and_pop3_logins_name_the_client(make_gateway) -> None:
    gateway = make_gateway(("smtp", "pop3"), extra=PLAINTEXT_POP3)
    gateway.add_user(ALICE, "right")
    gateway.start()
    refuse_relay_and_unknown_user(gateway)
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    client.user(ALICE)
    with pytest.raises(poplib.error_proto):
        client.pass_("wrong")
    client.close()
    client = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=30)
    client.user(ALICE)
    client.pass_("right")
    client.quit()
    wait_for(lambda: "pop3: login: " in gateway.log(), 15, "the POP3 login line")
    log = gateway.log()
    assert "reject: RCPT from [127.0.0.1]: 554 5.7.1 Relay access denied; from=<someone@remote.test> " \
           "to=<victim@elsewhere.test> helo=<client.test>" in log
    assert "reject: RCPT from [127.0.0.1]: 550 5.1.1 Recipient address rejected: User unknown; " in log
    assert f"auth failed: POP3 from [127.0.0.1]: user=<{ALICE}>" in log
    assert f"pop3: login: user=<{ALICE}> from [127.0.0.1], 0 message(s)" in log
    assert banned_hosts(log) == ["127.0.0.1"] * 3  # the documented fail2ban filter finds all three
    for noise in ("Starting factory", "Stopping factory", "starting on", "Port", "Resolver added"):
        assert noise not in log, noise


def test_json_logs_are_one_object_per_line_with_the_delivery_fields(make_gateway) -> None:
    gateway = make_gateway(extra='\n[log]\nformat = "json"\n')
    gateway.add_user(ALICE)
    gateway.start()
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as client:
        client.sendmail("someone@remote.test", [ALICE], b"Subject: hi\r\n\r\nhello\r\n")
    refuse_relay_and_unknown_user(gateway)
    wait_for(lambda: '"status": "sent"' in gateway.log(), 15, "the delivery line")
    gateway.stop()
    lines = [json.loads(line) for line in gateway.log().splitlines()]  # every line parses
    assert all({"time", "level", "event", "message"} <= set(line) for line in lines)
    [delivery] = [line for line in lines if line["event"] == "delivery"]
    assert (delivery["from"], delivery["to"], delivery["status"], delivery["relay"]) == (
        "someone@remote.test", ALICE, "sent", "local")
    assert delivery["queue_id"] and delivery["reply"] == "250 2.0.0 Delivered"
    [received] = [line for line in lines if line["event"] == "received"]
    assert received["queue_id"] == delivery["queue_id"] and received["client"] == "127.0.0.1"
    rejects = [line for line in lines if line["event"] == "smtp.reject"]
    assert [(line["client"], line["reply"][:3]) for line in rejects] == [("127.0.0.1", "554"), ("127.0.0.1", "550")]
    assert banned_hosts(gateway.log()) == ["127.0.0.1"] * 2  # the same filter, on JSON lines
    assert any(line["message"].startswith("mailgate started") for line in lines)
