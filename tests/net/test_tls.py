"""Tests for mailgate.net.tls, and POP3 over real TLS on loopback (STLS and implicit TLS)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import poplib
import shutil
import ssl
import stat
import tempfile
import warnings
from typing import Any

import bcrypt
from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import directlyProvides

from mailgate.accounts import users_file as users
from mailgate.store.maildir_writer import StoredMessage, deliver_durably
from mailgate.pop3.session import POP3Factory
from mailgate.net.tls import TLSLoadError, ensure_certificate, is_tls, server_tls_options
from mailgate.accounts.users_file import Accounts
from tests.support.gateway import tls12_handshake

ALICE, PASSWORD = "alice@example.test", "pa ss"
BODY = [b"Subject: over TLS\n\n.dotted line\n", (b"y" * 999 + b"\n") * 100, b"bye\n"]  # poplib: lines < 2048


class FakeAccounts:
    def verify(self, address: str, password: str) -> bool:
        return False


class CertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.cert = os.path.join(self.directory, "tls", "deeper", "cert.pem")
        self.key = os.path.join(self.directory, "tls", "key.pem")
        os.makedirs(os.path.dirname(self.cert))

    def load(self) -> x509.Certificate:
        with open(self.cert, "rb") as handle:
            return x509.load_pem_x509_certificate(handle.read())

    def test_generates_when_missing(self) -> None:
        self.assertTrue(ensure_certificate(self.cert, self.key, "mail.example.test"))
        self.assertEqual(stat.S_IMODE(os.stat(self.key).st_mode), 0o600)
        cert = self.load()
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["mail.example.test", "localhost"])
        self.assertEqual(san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")])
        lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        self.assertGreater(lifetime.days, 9 * 365)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.key))), ["deeper", "key.pem"])  # no temp files left
        self.assertEqual(os.listdir(os.path.dirname(self.cert)), ["cert.pem"])

    def test_existing_files_are_kept(self) -> None:
        ensure_certificate(self.cert, self.key, "mail.example.test")
        before = self.load().serial_number
        self.assertFalse(ensure_certificate(self.cert, self.key, "other.example.test"))
        self.assertEqual(self.load().serial_number, before)

    def test_one_missing_file_is_refused_and_the_other_kept(self) -> None:
        """A typo in one path must never replace the operator's other file (SPEC 0.2)."""
        ensure_certificate(self.cert, self.key, "mail.example.test")
        with open(self.cert, "rb") as handle:
            before = handle.read()
        os.unlink(self.key)
        with self.assertRaises(FileExistsError) as caught:
            ensure_certificate(self.cert, self.key, "mail.example.test")
        self.assertEqual(caught.exception.filename, self.cert)
        with open(self.cert, "rb") as handle:
            self.assertEqual(handle.read(), before)
        self.assertFalse(os.path.exists(self.key))

    def test_directories_are_not_made(self) -> None:
        with self.assertRaises(FileNotFoundError):
            ensure_certificate(os.path.join(self.directory, "nowhere", "c.pem"), self.key, "mail.example.test")
        self.assertFalse(os.path.exists(os.path.join(self.directory, "nowhere")))
        self.assertEqual(os.listdir(os.path.dirname(self.key)), ["deeper"])  # no key, no temporary file

    def test_generated_files_get_the_owner(self) -> None:
        ensure_certificate(self.cert, self.key, "mail.example.test", owner=(12345, 12346))
        for path in (self.cert, self.key):
            self.assertEqual((os.stat(path).st_uid, os.stat(path).st_gid), (12345, 12346))

    def test_ip_hostname_becomes_ip_san(self) -> None:
        ensure_certificate(self.cert, self.key, "192.0.2.1")
        san = self.load().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(ipaddress.ip_address("192.0.2.1"), san.get_values_for_type(x509.IPAddress))


class LoadTests(SynchronousTestCase):
    """server_tls_options loads and checks everything at once: one error naming the file."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.cert, self.key = self.pair("a")

    def pair(self, name: str) -> tuple[str, str]:
        cert, key = os.path.join(self.directory, f"{name}.crt"), os.path.join(self.directory, f"{name}.key")
        ensure_certificate(cert, key, "mail.example.test")
        return cert, key

    def refusal(self, cert: str, key: str, ciphers: str = "intermediate") -> tuple[str, str]:
        with self.assertRaises(TLSLoadError) as caught:
            server_tls_options(cert, key, ciphers)
        return caught.exception.which, str(caught.exception)

    def test_a_key_of_another_certificate(self) -> None:
        _, other = self.pair("b")
        self.assertEqual(self.refusal(self.cert, other),
                         ("key", f"{other} is not the private key of the certificate in {self.cert}"))

    def test_files_that_are_not_pem(self) -> None:
        self.assertEqual(self.refusal(self.key, self.key), ("certificate", f"{self.key}: not a PEM certificate"))
        self.assertEqual(self.refusal(self.cert, self.cert),
                         ("key", f"{self.cert}: not an unencrypted PEM private key"))

    def test_unreadable_file(self) -> None:
        missing = os.path.join(self.directory, "missing.pem")
        self.assertEqual(self.refusal(missing, self.key),
                         ("certificate", f"{missing}: cannot read: No such file or directory"))

    def test_ciphers_openssl_cannot_use(self) -> None:
        which, _ = self.refusal(self.cert, self.key, "eNULL")
        self.assertEqual(which, "ciphers")


class IsTLSTests(SynchronousTestCase):
    def test_plain_transport(self) -> None:
        self.assertFalse(is_tls(StringTransport()))

    def test_after_start_tls(self) -> None:
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)  # what tcp's startTLS does
        self.assertTrue(is_tls(transport))

    def test_tls_memory_bio_wrapper(self) -> None:
        """Implicit TLS: the protocol's transport is a TLSMemoryBIOProtocol, not an ISSLTransport."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
        ensure_certificate(cert, key, "localhost")
        factory = TLSMemoryBIOFactory(server_tls_options(cert, key), False, POP3Factory(
            accounts=FakeAccounts(), maildir_root=directory, hostname="localhost", tls_options=None,
            plaintext_auth="tls", reactor=reactor,
        ))  # fmt: skip
        wrapper = factory.buildProtocol(None)
        self.assertTrue(is_tls(wrapper))


class LoopbackTests(TestCase):
    """A blocking poplib client in a thread against the real reactor on 127.0.0.1."""

    def setUp(self) -> None:
        self.patch(users, "BCRYPT_ROUNDS", 4)
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.cert = os.path.join(self.directory, "tls", "cert.pem")
        key = os.path.join(self.directory, "tls", "key.pem")
        os.mkdir(os.path.dirname(key))
        ensure_certificate(self.cert, key, "mail.example.test")
        users_file = os.path.join(self.directory, "users")
        with open(users_file, "w") as handle:
            handle.write(f"{ALICE}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
        root = os.path.join(self.directory, "mail")
        self.new = os.path.join(root, "example.test", "alice", "new")
        lines = sum(chunk.count(b"\n") for chunk in BODY)
        message = StoredMessage.build(b"Return-Path: <a@example.test>\n", BODY, sum(map(len, BODY)), lines)
        deliver_durably([os.path.dirname(self.new)], message, "mail.example.test")
        self.tls_options = server_tls_options(self.cert, key)
        self.factory = POP3Factory(
            accounts=Accounts(users_file),
            maildir_root=root,
            hostname="mail.example.test",
            tls_options=self.tls_options,
            plaintext_auth="tls",
            reactor=reactor,
        )

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cert)  # verifies the SAN 127.0.0.1
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context

    async def listen(self, factory: Any) -> int:
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def test_stls_user_pass_retr_quit(self) -> Deferred[None]:
        async def run() -> None:
            result = await deferToThread(self.stls_session, await self.listen(self.factory))
            capa_before, refused, capa_after, listed, octets, lines = result
            self.assertIn("STLS", capa_before)
            self.assertNotIn("USER", capa_before)
            self.assertIn(b"-ERR [AUTH]", refused)
            self.assertIn("USER", capa_after)
            self.assertNotIn("STLS", capa_after)
            self.assertEqual(octets, listed)
            self.assertEqual(lines[1], b"Subject: over TLS")
            self.assertEqual(lines[3], b".dotted line")
            self.assertEqual(os.listdir(self.new), [])  # DELE + QUIT

        return Deferred.fromCoroutine(run())

    def stls_session(self, port: int) -> tuple[Any, ...]:
        client = poplib.POP3("127.0.0.1", port, timeout=10)
        try:
            capa_before = client.capa()
            try:
                client.user(ALICE)
                refused = b""
            except poplib.error_proto as error:
                refused = error.args[0]
            client.stls(self.client_context())
            capa_after = client.capa()
            client.user(ALICE)
            client.pass_(PASSWORD)
            listed = int(client.list(1).split()[2])
            _, lines, octets = client.retr(1)
            client.dele(1)
            client.quit()
        finally:
            client.close()
        return capa_before, refused, capa_after, listed, octets, lines

    def test_implicit_tls(self) -> Deferred[None]:
        async def run() -> None:
            wrapped = TLSMemoryBIOFactory(self.tls_options, False, self.factory)
            capa, stat_reply = await deferToThread(self.implicit_session, await self.listen(wrapped))
            self.assertNotIn("STLS", capa)
            self.assertIn("USER", capa)
            self.assertEqual(stat_reply[0], 1)
            self.assertEqual(len(os.listdir(self.new)), 1)

        return Deferred.fromCoroutine(run())

    def implicit_session(self, port: int) -> tuple[Any, Any]:
        client = poplib.POP3_SSL("127.0.0.1", port, context=self.client_context(), timeout=10)
        try:
            capa = client.capa()
            client.user(ALICE)
            client.pass_(PASSWORD)
            stat_reply = client.stat()
            client.quit()
        finally:
            client.close()
        return capa, stat_reply

    def test_tls_below_1_2_is_refused(self) -> Deferred[None]:
        async def run() -> None:
            wrapped = TLSMemoryBIOFactory(self.tls_options, False, self.factory)
            port = await self.listen(wrapped)
            self.assertEqual(await deferToThread(self.handshake, port, ssl.TLSVersion.TLSv1_1), "refused")
            # the same client offering TLS 1.2 gets in: the refusal was about the version
            self.assertEqual(await deferToThread(self.handshake, port, ssl.TLSVersion.TLSv1_2), "accepted")

        return Deferred.fromCoroutine(run())

    def handshake(self, port: int, maximum: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = maximum
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            return "refused"  # this OpenSSL can't even offer TLS 1.1
        try:
            client = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=10)
        except (ssl.SSLError, OSError):
            return "refused"
        client.close()
        return "accepted"


class CipherTests(TestCase):
    """TLS 1.2 suites a real client may negotiate: forward secrecy and AEAD only, unless `legacy`."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.cert, self.key = os.path.join(self.directory, "c.pem"), os.path.join(self.directory, "k.pem")
        ensure_certificate(self.cert, self.key, "localhost")

    async def listen(self, ciphers: str | None) -> int:
        options = server_tls_options(self.cert, self.key) if ciphers is None else \
            server_tls_options(self.cert, self.key, ciphers)
        factory = TLSMemoryBIOFactory(options, False, POP3Factory(
            accounts=FakeAccounts(), maildir_root=self.directory, hostname="localhost", tls_options=None,
            plaintext_auth="tls", reactor=reactor,
        ))  # fmt: skip
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def test_default_offers_forward_secret_aead_suites_only(self) -> Deferred[None]:
        async def run() -> None:
            port = await self.listen(None)
            for suite in ("AES128-SHA", "AES128-GCM-SHA256", "AES256-SHA256", "ECDHE-RSA-AES128-SHA"):
                self.assertEqual(await deferToThread(tls12_handshake, port, suite), "refused", suite)
            for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"):
                self.assertEqual(await deferToThread(tls12_handshake, port, suite), suite)

        return Deferred.fromCoroutine(run())

    def test_intermediate_is_the_default(self) -> Deferred[None]:
        async def run() -> None:
            port = await self.listen("intermediate")
            self.assertEqual(await deferToThread(tls12_handshake, port, "AES128-SHA"), "refused")
            self.assertEqual(await deferToThread(tls12_handshake, port, "ECDHE-RSA-AES256-GCM-SHA384"),
                             "ECDHE-RSA-AES256-GCM-SHA384")

        return Deferred.fromCoroutine(run())

    def test_legacy_still_serves_old_clients(self) -> Deferred[None]:
        async def run() -> None:
            port = await self.listen("legacy")
            for suite in ("AES128-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"):
                self.assertEqual(await deferToThread(tls12_handshake, port, suite), suite)

        return Deferred.fromCoroutine(run())

    def test_an_openssl_cipher_string(self) -> Deferred[None]:
        async def run() -> None:
            port = await self.listen("ECDHE+CHACHA20")
            self.assertEqual(await deferToThread(tls12_handshake, port, "ECDHE-RSA-AES128-GCM-SHA256"), "refused")
            self.assertEqual(await deferToThread(tls12_handshake, port, "ECDHE-RSA-CHACHA20-POLY1305"),
                             "ECDHE-RSA-CHACHA20-POLY1305")

        return Deferred.fromCoroutine(run())

