"""SMTPUTF8 (RFC 6531-6533) end to end: a real `twistd mailgate`, smtplib and poplib, fake next hops.

A UTF-8 local user gets mail that smtplib sends with SMTPUTF8 and reads it
over POP3; forwards and lists name UTF-8 addresses; domains in U-labels and
A-labels are one (relay.transport, RCPT); a next hop that offers SMTPUTF8
gets the message as it came, one that does not gets nothing and the
sender a 5.6.7 report with utf-8 address types.
"""

from __future__ import annotations

import email
import poplib
import smtplib
from email import policy
from email.message import EmailMessage

from tests.support.gateway import Gateway, eventually, free_port
from tests.support.relay_gateway import ALICE, PRIMARY, GatewayTestCase, RawSMTP

JOSE = "josé@example.test"
FORWARDS = '''
[[forward]]
match = "équipe@example.test"
to = ["JOSE\\u0301@example.test"]

[lists."liste@example.test"]
members = ["josé@example.test"]
'''


def utf8_message(recipient: str, subject: str = "Grüße, José") -> EmailMessage:
    message = EmailMessage(policy=policy.SMTPUTF8)
    message["From"], message["To"], message["Subject"] = "sender@remote.test", recipient, subject
    message.set_content("Ça marche.\n")
    return message


def send(gateway: Gateway, sender: str, recipient: str, message: EmailMessage) -> None:
    """smtplib.send_message: SMTPUTF8 and UTF-8 commands because an address is international."""
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("smtputf8")
        refused = client.send_message(message, sender, [recipient])
        assert refused == {}, refused


class SMTPUTF8Tests(GatewayTestCase):
    async def start_with(self, mx_port: int, relay: dict | None = None) -> Gateway:
        gateway = self.gateway(mx_port, relay, FORWARDS)
        for user in (ALICE, JOSE):
            gateway.add_user(user)
        return await self.start(gateway)

    async def test_a_utf8_user_gets_mail_and_reads_it_over_pop3(self) -> None:
        gateway = self.gateway(free_port(), None, FORWARDS)
        gateway.ports["pop3"] = free_port()
        gateway.config.write_text(gateway.config.read_text().replace("[relay]", (
            f'[[listen]]\nname = "pop3"\nprotocol = "pop3"\nendpoint = "tcp:{gateway.ports["pop3"]}:'
            'interface=127.0.0.1"\n\n[security]\nplaintext_auth = "always"\n\n[relay]'), 1))
        gateway.add_user(JOSE)
        await self.start(gateway)
        send(gateway, "sender@remote.test", "JOSÉ@Example.Test", utf8_message(JOSE))
        [path] = await eventually(lambda: gateway.new_messages(JOSE), "delivery to josé")
        stored = path.read_bytes()
        self.assertIn("Subject: Grüße, José".encode(), stored)
        self.assertIn("with UTF8SMTP id".encode(), stored)
        self.assertIn(f"for <{JOSE}>".encode(), stored)

        pop = poplib.POP3("127.0.0.1", gateway.ports["pop3"], timeout=10)
        try:
            pop.user("JOSE\u0301@EXAMPLE.test")  # poplib sends UTF-8; the one address rule finds josé
            pop.pass_("secret")
            _, lines, _ = pop.retr(1)
        finally:
            pop.quit()
        retrieved = email.message_from_bytes(b"\r\n".join(lines) + b"\r\n", policy=policy.SMTPUTF8)
        self.assertEqual(retrieved["Subject"], "Grüße, José")
        self.assertEqual(retrieved.get_content().replace("\r\n", "\n"), "Ça marche.\n")

    async def test_forwards_and_lists_with_utf8_addresses(self) -> None:
        gateway = await self.start_with(free_port())
        send(gateway, "sender@remote.test", "Équipe@example.test", utf8_message("équipe@example.test", "forwarded"))
        send(gateway, "sender@remote.test", "liste@example.test", utf8_message("liste@example.test", "listed"))
        paths = await eventually(lambda: len(gateway.new_messages(JOSE)) == 2 and gateway.new_messages(JOSE),
                                 "both copies for josé")
        subjects = sorted(email.message_from_bytes(p.read_bytes(), policy=policy.SMTPUTF8)["Subject"] for p in paths)
        self.assertEqual(subjects, ["forwarded", "listed"])

    async def test_non_ascii_without_smtputf8_is_refused(self) -> None:
        gateway = await self.start_with(free_port())
        client = RawSMTP(gateway.ports["smtp"])
        try:
            client.reply()
            client.command(b"EHLO client.test")
            self.assertEqual(client.command("MAIL FROM:<josé@example.test>".encode())[0], 553)
            self.assertEqual(client.command(b"MAIL FROM:<s@remote.test>")[0], 250)
            code, text = client.command("RCPT TO:<josé@example.test>".encode())
            self.assertEqual((code, text[:5]), (553, "5.6.7"))
            self.assertEqual(client.command(b"RSET")[0], 250)
            self.assertEqual(client.command(b"MAIL FROM:<s@remote.test> SMTPUTF8")[0], 250)
            self.assertEqual(client.command("RCPT TO:<josé@example.test>".encode())[0], 250)
        finally:
            client.close()

    async def test_a_next_hop_with_smtputf8_gets_the_message(self) -> None:
        sink = await self.serve(PRIMARY, extensions=("SMTPUTF8",))
        gateway = await self.start_with(sink.port)
        send(gateway, JOSE, "bob@remote.test", utf8_message("bob@remote.test", "Grüße"))
        await eventually(lambda: sink.messages, "the next hop to receive the message")
        commands = sink.sessions[0].commands
        [mail] = [c for c in commands if c.startswith("MAIL FROM:")]
        self.assertTrue(mail.startswith(f"MAIL FROM:<{JOSE}>") and mail.endswith(" SMTPUTF8"), mail)
        self.assertIn("Subject: Grüße".encode(), sink.message_bodies()[0])

    async def test_u_labels_and_a_labels_are_one_domain(self) -> None:
        sink = await self.serve(PRIMARY, extensions=("SMTPUTF8",))
        gateway = await self.start_with(free_port(), {"transport": {"bücher.example": f"smtp:{PRIMARY}:{sink.port}"}})
        send(gateway, ALICE, "Ana@XN--BCHER-KVA.example", utf8_message("ana@bücher.example", "idn"))
        await eventually(lambda: sink.messages, "the next hop for bücher.example")
        rcpts = [c for c in sink.sessions[0].commands if c.startswith("RCPT TO:")]
        self.assertEqual(rcpts, ["RCPT TO:<ana@xn--bcher-kva.example>"])

    async def test_a_next_hop_without_smtputf8_gets_nothing_and_the_sender_a_5_6_7_report(self) -> None:
        sink = await self.serve(PRIMARY)  # no SMTPUTF8
        gateway = await self.start_with(sink.port)
        send(gateway, ALICE, "josé@remote.test", utf8_message("josé@remote.test"))
        raw, parsed = await self.bounce_for(gateway, ALICE)
        await self.queue_empty()
        status = self.assertReport(raw, parsed)
        self.assertIn(b"Status: 5.6.7", status)
        self.assertIn(b"Action: failed", status)
        self.assertIn(b"Final-Recipient: utf-8; jos\\x{00E9}@remote.test", status)
        self.assertEqual(sink.messages, [])
        self.assertFalse([c for c in sink.sessions[0].commands if c.startswith(("MAIL", "RCPT", "DATA"))])

    async def test_a_utf8_sender_gets_its_report_in_utf8(self) -> None:
        sink = await self.serve(PRIMARY)  # no SMTPUTF8
        gateway = await self.start_with(sink.port)
        send(gateway, JOSE, "bob@remote.test", utf8_message("bob@remote.test"))
        raw, parsed = await self.bounce_for(gateway, JOSE)
        status = self.assertReport(raw, parsed)
        self.assertIn(b"Status: 5.6.7", status)
        self.assertIn("\nTo: josé@example.test\n".encode(), raw)  # RFC 6532: as it is, no encoded-word
