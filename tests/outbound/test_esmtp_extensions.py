"""What the SMTP client tells a next hop of #15's extensions: DSN parameters and SMTPUTF8, or why not."""

from __future__ import annotations

from mailgate.core.dsn import DSNRequest
from tests.outbound.test_smtp_transport import PRIMARY, SENDER, RelayTestCase

BOB, CAROL = "bob@remote.test", "carol@remote.test"
DSN = DSNRequest(("RET=HDRS", "ENVID=e1"), {BOB: ("NOTIFY=SUCCESS", "ORCPT=rfc822;bob@remote.test")})


class ExtensionTests(RelayTestCase):
    async def deliver(self, port: int, **options: object) -> list:
        return await self.relay(port).deliver_by_mx("remote.test", SENDER, [BOB, CAROL], self.stored(), **options)

    async def test_a_host_with_dsn_gets_the_parameters_and_reports_itself(self) -> None:
        server = await self.serve(PRIMARY, extensions=("DSN",))
        results = await self.deliver(server.port, dsn=DSN)
        mail, bob, carol = [c for c in server.sessions[0].commands if c.startswith(("MAIL", "RCPT"))]
        self.assertTrue(mail.endswith(" RET=HDRS ENVID=e1"), mail)
        self.assertEqual(bob, f"RCPT TO:<{BOB}> NOTIFY=SUCCESS ORCPT=rfc822;bob@remote.test")
        self.assertEqual(carol, f"RCPT TO:<{CAROL}>")
        self.assertEqual([r.success_action for r in results], [None, None])

    async def test_a_host_without_dsn_gets_none_and_success_is_relayed(self) -> None:
        server = await self.serve(PRIMARY)
        results = await self.deliver(server.port, dsn=DSN)
        commands = server.sessions[0].commands
        self.assertFalse([c for c in commands if "NOTIFY" in c or "RET=" in c or "ENVID" in c], commands)
        self.assertEqual([r.success_action for r in results], ["relayed", "relayed"])

    async def test_smtputf8_goes_only_to_a_host_that_offers_it(self) -> None:
        server = await self.serve(PRIMARY, extensions=("SMTPUTF8",))
        results = await self.deliver(server.port, smtputf8=True)
        [mail] = [c for c in server.sessions[0].commands if c.startswith("MAIL")]
        self.assertTrue(mail.endswith(" SMTPUTF8"), mail)
        self.assertTrue(all(r.delivered for r in results))

    async def test_a_host_without_smtputf8_gets_no_transaction_and_a_5_6_7(self) -> None:
        server = await self.serve(PRIMARY)
        results = await self.deliver(server.port, smtputf8=True)
        self.assertAll(results, 550, "5.6.7")
        self.assertFalse([c for c in server.sessions[0].commands if c.startswith(("MAIL", "RCPT", "DATA"))])
        self.assertEqual(server.messages, [])
