"""AuthThrottle: failed logins per (IP, account) and per IP, their delays, lockouts and log lines."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailgate.accounts import users_file
from mailgate.config import LimitsConfig
from mailgate.limits.auth_throttle import AuthThrottle, for_log
from mailgate.pop3.session import POP3Factory
from tests.support.logs import LogLines
from tests.support.pop3_session import FakeAccounts, FakeReactor, TLSCapableTransport
from tests.support.smtp_session import Server

IP, OTHER_IP = "192.0.2.1", "192.0.2.2"
ALICE, BOB = "alice@example.test", "bob@example.test"


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = AuthThrottle(self.clock, failures_per_account=5, failures_per_ip=20, penalty_seconds=300)

    def fail(self, times: int, ip: str = IP, account: str = ALICE) -> None:
        for _ in range(times):
            self.throttle.record_failure(ip, account)

    def test_delay_doubles_per_failure_of_the_pair_and_is_capped(self) -> None:
        delays = [self.throttle.delay_seconds(IP, ALICE)]
        for _ in range(6):
            self.fail(1)
            delays.append(self.throttle.delay_seconds(IP, ALICE))
        self.assertEqual(delays, [0, 1, 2, 4, 8, 8, 8])
        self.assertEqual(self.throttle.delay_seconds(IP, BOB), 0)

    def test_five_failures_lock_the_pair_out(self) -> None:
        self.fail(4)
        self.assertFalse(self.throttle.locked_out(IP, ALICE))
        self.fail(1, account="ALICE@Example.Test ")  # the same account
        self.assertTrue(self.throttle.locked_out(IP, ALICE))
        self.assertFalse(self.throttle.locked_out(IP, BOB))  # someone else behind the same address
        self.assertFalse(self.throttle.locked_out(OTHER_IP, ALICE))  # the owner, elsewhere

    def test_many_failures_from_one_address_lock_it_out(self) -> None:
        for n in range(19):
            self.fail(1, account=f"user{n}@example.test")
        self.assertFalse(self.throttle.locked_out(IP, BOB))
        self.fail(1, account="user19@example.test")
        self.assertTrue(self.throttle.locked_out(IP, BOB))
        self.assertFalse(self.throttle.locked_out(OTHER_IP, BOB))

    def test_failures_expire_after_the_penalty(self) -> None:
        for _ in range(5):
            self.fail(1)
            self.clock.advance(10)
        self.clock.advance(300 - 45)
        self.assertEqual(self.throttle.failures(IP, ALICE), 4)
        self.assertFalse(self.throttle.locked_out(IP, ALICE))
        self.clock.advance(100)
        self.assertEqual((self.throttle.failures(IP, ALICE), self.throttle.failures(IP)), (0, 0))
        self.assertEqual(self.throttle.delay_seconds(IP, ALICE), 0)

    def test_success_clears_its_pair_only(self) -> None:
        self.fail(4)
        self.fail(3, account=BOB)
        self.throttle.record_success(IP, ALICE)
        self.assertEqual(self.throttle.failures(IP, ALICE), 0)
        self.assertEqual(self.throttle.failures(IP, BOB), 3)
        self.assertEqual(self.throttle.failures(IP), 7)  # a valid account cannot wipe the address's count

    def test_attempts_during_the_penalty_are_not_admitted(self) -> None:
        self.assertTrue(self.throttle.admit(IP, ALICE, "smtp"))
        self.throttle.record_failure(IP, ALICE)
        self.throttle.release(IP, ALICE)
        self.clock.advance(0.5)  # the failure's answer is due after 1 s: a client that did not wait
        self.assertFalse(self.throttle.admit(IP, ALICE, "smtp"))
        self.assertTrue(self.throttle.admit(IP, BOB, "smtp"))  # another account
        self.throttle.release(IP, BOB)
        self.clock.advance(0.5)
        self.assertTrue(self.throttle.admit(IP, ALICE, "smtp"))  # the client that waited for its answer
        self.throttle.release(IP, ALICE)

    def test_nothing_is_admitted_while_locked_out(self) -> None:
        self.fail(5)
        self.clock.advance(60)  # long past every delay
        self.assertFalse(self.throttle.admit(IP, ALICE, "smtp"))
        self.assertTrue(self.throttle.admit(OTHER_IP, ALICE, "smtp"))

    def test_passwords_being_checked_count_against_the_limits(self) -> None:
        """Parallel connections cannot have more passwords checked than the lockout leaves."""
        self.assertEqual([self.throttle.admit(IP, ALICE, "smtp") for _ in range(6)], [True] * 5 + [False])
        self.throttle.release(IP, ALICE)
        self.assertTrue(self.throttle.admit(IP, ALICE, "smtp"))
        throttle = AuthThrottle(self.clock, failures_per_ip=3)
        self.assertEqual([throttle.admit(IP, f"user{n}", "pop3") for n in range(4)], [True] * 3 + [False])

    def test_refusals_are_logged(self) -> None:
        log = LogLines(self)
        self.fail(5)
        self.throttle.admit(IP, ALICE, "pop3")
        self.assertEqual(log.matching("auth refused"),
                         ["auth refused: ip=192.0.2.1 user=alice@example.test protocol=pop3 (too many failures, "
                          "not checked)"])

    def test_memory_is_bounded(self) -> None:
        """A scan from many addresses can't grow the tables without limit."""
        throttle = AuthThrottle(self.clock, max_tracked=100)
        for n in range(1000):
            throttle.record_failure(f"10.0.{n // 256}.{n % 256}", f"user{n}")
        self.assertEqual(throttle.failures("10.0.0.0"), 0)
        self.assertEqual(throttle.failures("10.0.3.231"), 1)
        self.assertEqual(throttle.failures("10.0.3.231", "user999"), 1)

    def test_from_the_configuration(self) -> None:
        throttle = AuthThrottle.from_limits(
            LimitsConfig(auth_failures_per_account=2, auth_failures_per_ip=3, auth_penalty_seconds=60), self.clock)
        throttle.record_failure(IP, ALICE)
        throttle.record_failure(IP, ALICE)
        self.assertTrue(throttle.locked_out(IP, ALICE))
        self.clock.advance(61)
        self.assertFalse(throttle.locked_out(IP, ALICE))


def test_for_log() -> None:
    assert for_log("alice@example.test") == "alice@example.test"
    assert for_log("") == "''"
    assert for_log("é") == "\\xe9"


def test_smtp_and_pop3_failures_count_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One throttle for the server: bad SMTP AUTH passwords lock the account out of POP3 too, from that address."""
    monkeypatch.setattr(users_file, "BCRYPT_ROUNDS", 4)
    smtp = Server(tmp_path, auth=True, security={"plaintext_auth": "always"})
    client = smtp.connect(ip="192.0.2.7")
    client.send(b"EHLO client.test\r\n")
    wrong = base64.b64encode(f"\0{ALICE}\0wrong".encode())
    for _ in range(5):
        client.protocol.dataReceived(b"AUTH PLAIN " + wrong + b"\r\n")
        smtp.clock.advance(10)
    pop3 = POP3Factory(accounts=FakeAccounts({ALICE: "secret", BOB: "bobpw"}), maildir_root=str(tmp_path),
                       hostname="mail.example.test", tls_options=None, plaintext_auth="always",
                       reactor=FakeReactor(), throttle=smtp.factory.policy.throttle)

    def pop3_login(user: str, password: str) -> bytes:
        protocol, transport = pop3.buildProtocol(None), TLSCapableTransport("192.0.2.7")
        protocol.makeConnection(transport)
        transport.clear()
        protocol.dataReceived(f"USER {user}\r\nPASS {password}\r\n".encode())
        return transport.value()

    assert b"Too many" in pop3_login(ALICE, "secret")
    assert b"+OK Logged in." in pop3_login(BOB, "bobpw")
