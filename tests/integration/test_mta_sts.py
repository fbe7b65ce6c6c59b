"""MTA-STS end to end: a real twistd, its policy served over HTTPS by twisted.web (trustme certificate).

mta-sts.remote.test resolves (fake DNS) to 127.0.0.7, where the policy is
served on a free port (relay.mta_sts_port), its certificate issued by a
test CA that relay.mta_sts_ca_file trusts. remote.test's MX hosts are
mx1/mx2.remote.test on 127.0.0.2/3 as in the other relay tests.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support.certificates import CertificateAuthority
from tests.support.gateway import eventually
from tests.support.relay_gateway import ALICE, BOB, GatewayTestCase, submit

POLICY_HOST = "127.0.0.7"


def policy(mode: str, mx: str = "*.remote.test") -> bytes:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n".encode()


class MTASTSTests(GatewayTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority()
        self.dns.records["_mta-sts.remote.test"] = {"TXT": ["v=STSv1; id=20250101"]}
        self.dns.records["mta-sts.remote.test"] = {"A": [POLICY_HOST]}
        self.fetches = 0

    def serve_policy(self, body: bytes) -> int:
        test = self

        class Counted(Resource):
            isLeaf = True

            def render_GET(self, request):  # noqa: N802 - twisted.web's name
                test.fetches += 1
                request.setHeader(b"content-type", b"text/plain")
                return body

        well_known = Resource()
        well_known.putChild(b"mta-sts.txt", Counted())
        root = Resource()
        root.putChild(b".well-known", well_known)
        port = reactor.listenSSL(0, Site(root), self.ca.server_options("mta-sts.remote.test"),
                                 interface=POLICY_HOST)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def sts_gateway(self, mode: str, mx: str = "*.remote.test", **sink: object) -> tuple:
        https_port = self.serve_policy(policy(mode, mx))
        primary, _backup = await self.two_mx(**sink)
        gateway = self.gateway(primary.port, {"mta_sts_ca_file": self.ca.write_ca(self.root / "etc" / "ca.pem"),
                                              "mta_sts_port": https_port})
        return primary, await self.start(gateway)

    async def test_enforce_refuses_a_host_without_starttls(self) -> None:
        """enforce: the MX offers no STARTTLS, so the message stays queued (4.7.5, the policy named);
        the policy is cached under state_dir and fetched once."""
        primary, gateway = await self.sts_gateway("enforce")
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: protected\r\n\r\nhi\r\n")
        entry = await self.attempted(queue_id)
        self.assertIn("4.7.5", entry.last_error or "")
        self.assertIn("MTA-STS policy of remote.test (enforce) requires TLS", entry.last_error or "")
        self.assertEqual(primary.messages, [])
        self.assertEqual([c for s in primary.sessions for c in s.commands if c.startswith("MAIL")], [])
        cached = json.loads((self.root / "var" / "mta-sts" / "remote.test.json").read_text())
        self.assertEqual((cached["mode"], cached["id"], cached["mx"]), ("enforce", "20250101", ["*.remote.test"]))
        await self.attempted(queue_id, 2)
        self.assertEqual(self.fetches, 1)  # the second attempt used the cached policy
        [item] = await self.queue_list(gateway)
        self.assertIn("MTA-STS policy of remote.test", item["last_error"])

    async def test_testing_mode_delivers_and_logs(self) -> None:
        primary, gateway = await self.sts_gateway("testing")
        submit(gateway, ALICE, [BOB], b"Subject: testing\r\n\r\nhi\r\n")
        await eventually(lambda: primary.messages, "delivery despite the testing policy")
        self.assertIn("MTA-STS testing", gateway.log())
        self.assertFalse(primary.sessions[0].tls)

    async def test_enforce_delivers_over_verified_starttls(self) -> None:
        """enforce, and the MX offers STARTTLS with a certificate for mx1.remote.test from the trusted CA."""
        primary, gateway = await self.sts_gateway("enforce", starttls=True,
                                                  tls_options=self.ca.server_options("mx1.remote.test"))
        submit(gateway, ALICE, [BOB], b"Subject: verified\r\n\r\nhi\r\n")
        await eventually(lambda: primary.messages, "delivery over verified TLS")
        await self.queue_empty()
        self.assertTrue(primary.sessions[0].tls)

    async def test_enforce_refuses_a_certificate_for_another_name(self) -> None:
        primary, gateway = await self.sts_gateway("enforce", starttls=True,
                                                  tls_options=self.ca.server_options("other.test"))
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: wrong name\r\n\r\nhi\r\n")
        entry = await self.attempted(queue_id)
        self.assertIn("TLS failed", entry.last_error or "")
        self.assertIn("MTA-STS policy of remote.test (enforce)", entry.last_error or "")
        self.assertEqual(primary.messages, [])
        self.assertFalse(any("MAIL FROM" in c for s in primary.sessions for c in s.commands))  # never in clear

    async def test_enforce_with_no_matching_mx(self) -> None:
        primary, gateway = await self.sts_gateway("enforce", mx="mail.elsewhere.test")
        queue_id = submit(gateway, ALICE, [BOB], b"Subject: no match\r\n\r\nhi\r\n")
        entry = await self.attempted(queue_id)
        self.assertIn("no MX host", entry.last_error or "")
        self.assertEqual(primary.sessions, [])
