"""Smarthost AUTH end to end: a real twistd, a smarthost that wants AUTH over TLS (trustme certificate).

AUTH PLAIN/LOGIN goes only after STARTTLS, or over implicit TLS; never in
plain text, whatever the smarthost offers; a 535 bounces with the
smarthost's reply; the password is read from its file and never logged.
"""

from __future__ import annotations

from tests.support.certificates import CertificateAuthority
from tests.support.gateway import Gateway
from tests.support.relay_gateway import ALICE, BACKUP, BOB, GatewayTestCase, submit
from tests.support.gateway import eventually

USER, PASSWORD = "relay-user", "correct horse battery"


class SmarthostAuthTests(GatewayTestCase):
    async def smarthost_gateway(self, password: str = PASSWORD, relay: dict | None = None,
                                **knobs: object) -> tuple[object, Gateway]:
        ca = CertificateAuthority()
        settings = dict(starttls=True, tls_options=ca.server_options(BACKUP), auth={USER: PASSWORD})
        settings.update(knobs)
        smarthost = await self.serve(BACKUP, **settings)
        (self.root / "etc" / "smarthost.pw").write_text(password + "\n")
        gateway = self.gateway(1, {"smarthost": f"{BACKUP}:{smarthost.port}", "smarthost_username": USER,
                                   "smarthost_password_file": "etc/smarthost.pw", **(relay or {})})
        gateway.add_user(ALICE)
        return smarthost, await self.start(gateway)

    async def test_auth_after_starttls_with_the_right_credentials(self) -> None:
        """The smarthost gets the mail from the configured user, and AUTH came after STARTTLS only."""
        smarthost, gateway = await self.smarthost_gateway()
        submit(gateway, ALICE, [BOB], b"Subject: via an authenticated smarthost\r\n\r\nhi\r\n")
        await eventually(lambda: smarthost.messages, "the smarthost to receive the message")
        await self.queue_empty()
        [session] = smarthost.sessions
        self.assertEqual(session.auth_user, USER)
        self.assertTrue(session.tls)
        self.assertFalse(session.auth_before_tls)
        verbs = [command.split()[0].upper() for command in session.commands]
        self.assertLess(verbs.index("STARTTLS"), verbs.index("AUTH"))
        self.assertNotIn(PASSWORD, gateway.log())

    async def test_535_bounces_with_the_smarthost_reply(self) -> None:
        """Bad credentials: every recipient fails at once, the bounce quotes the 535; no password in the log."""
        smarthost, gateway = await self.smarthost_gateway(password="wrong password")
        submit(gateway, ALICE, [BOB], b"Subject: refused\r\n\r\nhi\r\n")
        raw, parsed = await self.bounce_for(gateway, ALICE)
        status = self.assertReport(raw, parsed)
        self.assertIn(b"Status: 5.7.8", status)
        self.assertIn(b"535 5.7.8 Authentication credentials invalid", status.replace(b"\n ", b" "))
        await self.queue_empty()
        self.assertEqual(smarthost.messages, [])
        self.assertNotIn("wrong password", gateway.log())
        self.assertIn("AUTH as relay-user refused: 535", gateway.log())

    async def test_no_auth_in_plain_text_even_when_offered(self) -> None:
        """A smarthost offering AUTH but no STARTTLS hears no AUTH and gets no mail: it waits (4.7.4)."""
        smarthost, gateway = await self.smarthost_gateway(starttls=False, auth_after_tls=False)
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: not in clear\r\n\r\nhi\r\n")
        entry = await self.attempted(queue_id)
        self.assertIn("4.7.4", entry.last_error or "")
        self.assertIn("AUTH only over TLS", entry.last_error or "")
        self.assertEqual(smarthost.messages, [])
        self.assertFalse(any(command.upper().startswith("AUTH") for s in smarthost.sessions for command in s.commands))

    async def test_implicit_tls_smarthost(self) -> None:
        """relay.smarthost_tls = "implicit": TLS from the first byte, then AUTH LOGIN when PLAIN is not offered."""
        smarthost, gateway = await self.smarthost_gateway(relay={"smarthost_tls": "implicit"}, implicit_tls=True,
                                                          starttls=False, auth_mechanisms="LOGIN")
        submit(gateway, ALICE, [BOB], b"Subject: port 465\r\n\r\nhi\r\n")
        await eventually(lambda: smarthost.messages, "the smarthost to receive the message")
        [session] = smarthost.sessions
        self.assertEqual(session.auth_user, USER)
        self.assertNotIn("STARTTLS", session.commands)
        self.assertTrue(any(command == "AUTH LOGIN" for command in session.commands))
        self.assertNotIn(PASSWORD, gateway.log())
