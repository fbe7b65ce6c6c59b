"""POP3 logins, refused logins and deletions each leave a log line with the client's IP and the user."""

from __future__ import annotations

from tests.pop3.test_session import ALICE, SessionTestCase
from tests.smtp.test_refusal_log import RecordingMeters
from tests.support.logs import LogLines


class LogTests(SessionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.log = LogLines(self)
        self.meters = self.factory.meters = RecordingMeters()
        self.deliver(b"Subject: one\n\nbody\n", b"Subject: two\n\nbody\n")

    def test_a_login_and_the_deletions_at_quit(self) -> None:
        self.assertTrue(self.login().endswith(b"+OK Logged in.\r\n"))
        self.send(b"DELE 1\r\nDELE 2\r\nQUIT\r\n")
        self.assertIn(f"pop3: login: user=<{ALICE}> from [192.0.2.7], 2 message(s)", self.log.lines)
        self.assertIn(f"pop3: deleted 2 message(s): user=<{ALICE}> from [192.0.2.7]", self.log.lines)

    def test_a_refused_login_names_the_client_and_the_user(self) -> None:
        self.protocol, self.transport = self.connect()  # after the meters were set
        self.login(password="wrong")
        self.reactor.advance(10)  # the throttle's delay before -ERR
        self.assertEqual([line for line in self.log.lines if "auth failed" in line],
                         [f"auth failed: POP3 from [192.0.2.7]: user=<{ALICE}>"])
        [event] = self.log.named("auth.failure")
        self.assertEqual((event["protocol"], event["client"], event["user"]), ("pop3", "192.0.2.7", ALICE))
        self.assertIn(("auth_failed", "pop3"), self.meters.calls)

    def test_sessions_are_counted(self) -> None:
        protocol, transport = self.connect("192.0.2.9")
        protocol.connectionLost(None)
        self.assertIn(("opened", "pop3", "pop3"), self.meters.calls)
        self.assertEqual([c for c in self.meters.calls if c[0] == "closed"][-1][:3], ("closed", "pop3", "pop3"))
