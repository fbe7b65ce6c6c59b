"""Address safety: MAIL FROM / RCPT TO paths can never reach outside `store.maildir_root`.

Sessions run over StringTransport with the real Deliverer and MaildirStore
(blocking calls run inline, so every reply is immediate). An audit hook
records each file system call the session makes meanwhile, so "never
touches the file system" and "stays inside maildir_root" are checked on
what really happened, not on what the code is meant to do.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.internet.defer import maybeDeferred

import mailgate
from mailgate import hookimpl
from mailgate.inbound.transaction import Deliverer
from mailgate.store.maildir_writer import MaildirStore, mailbox_path
from tests.support.smtp_session import HOSTNAME, Client, Server

# --- recording file system calls -------------------------------------------------

_recording: dict[int, list[tuple[str, str]]] = {}  # thread id -> (event, path), while recording
_PATH_EVENTS = {  # audit event -> how many leading arguments are paths
    "open": 1, "os.mkdir": 1, "os.rename": 2, "os.replace": 2, "os.link": 2, "os.symlink": 2, "os.remove": 1,
    "os.rmdir": 1, "os.listdir": 1, "os.scandir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
    "os.utime": 1, "os.chdir": 1,
}


def _audit(event: str, args: tuple) -> None:
    calls = _recording.get(threading.get_ident())
    if calls is None or event not in _PATH_EVENTS:
        return
    for arg in args[: _PATH_EVENTS[event]]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            calls.append((event, os.fsdecode(arg)))


sys.addaudithook(_audit)  # cannot be removed; costs one dict lookup per event when not recording


@contextmanager
def file_system_calls() -> Iterator[list[tuple[str, str]]]:
    calls: list[tuple[str, str]] = []
    _recording[threading.get_ident()] = calls
    try:
        yield calls
    finally:
        del _recording[threading.get_ident()]


def _inside(path: str, directory: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([real, base]) == base


# --- the session under test --------------------------------------------------------


class CatchAll:
    """A permissive plugin: every recipient is routed to a local mailbox of its own name."""

    @hookimpl
    def mailgate_route(self, recipient: str) -> str:
        return "local"


class Gateway:
    """A Server whose deliveries really go to Maildirs under `root/mail`, synchronously."""

    def __init__(self, root: Path, *plugins: object) -> None:
        self.root = root
        self.maildir_root = str(root / "mail")
        self.server = Server(root, extra_plugins=plugins, store={"maildir_root": self.maildir_root})
        store = MaildirStore(self.maildir_root, HOSTNAME, lambda f, *a: maybeDeferred(f, *a))
        self.server.factory.policy.deliverer = Deliverer(store, None, self.server.factory.policy.hooks)

    def client(self) -> Client:
        c = self.server.connect()
        c.send(b"EHLO client.test\r\n")
        return c

    def unexpected(self, calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Calls outside maildir_root, other than reading the users file, fsyncing the directory
        maildir_root was just created in, and Python's own files."""
        allowed = [self.maildir_root, sys.prefix, sys.base_prefix, os.path.dirname(mailgate.__file__)]
        exact = {os.path.realpath(self.root / "users"), os.path.realpath(os.path.dirname(self.maildir_root))}
        return [(event, path) for event, path in calls
                if os.path.realpath(path) not in exact and not any(_inside(path, a) for a in allowed)]

    def mailbox_calls(self, calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(event, path) for event, path in calls if _inside(path, self.maildir_root)]

    def stored(self) -> list[Path]:
        return sorted(Path(self.maildir_root).glob("*/*/new/*"))


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


BAD_PATHS = {
    "dot-dot": b"<..@example.test>",
    "slash": b"<a/b@example.test>",
    "parent-dirs": b"<../../etc@example.test>",
    "leading-dot": b"<.alice@example.test>",
    "trailing-dot": b"<alice.@example.test>",
    "nul": b"<a\x00b@example.test>",
    "soh": b"<a\x01b@example.test>",
    "escape": b"<a\x1b[2Jb@example.test>",
    "del": b"<a\x7fb@example.test>",
    "tab": b"<a\tb@example.test>",
    "bare-cr": b"<a\rb@example.test>",
    "local-65": b"<" + b"a" * 65 + b"@example.test>",
    "path-300": b"<" + b"a" * 60 + b"@" + b".".join([b"b" * 60, b"c" * 60, b"d" * 60, b"e" * 50, b"test"]) + b">",
    "quoted-slash": b'<"../x"@example.test>',
    "quoted-backslash": b'<"..\\/x"@example.test>',
    "quoted-nul": b'<"a\x00"@example.test>',
    "domain-dot-dot": b"<alice@..>",
    "domain-parent": b"<alice@../etc>",
    "domain-slash": b"<alice@example.test/..>",
    "domain-leading-dot": b"<alice@.example.test>",
    "literal-slash": b"<alice@[../x]>",
    "route-slash": b"<@../x:alice@example.test>",
}


@pytest.mark.parametrize("path", BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_rcpt_with_unsafe_path_is_refused_without_touching_the_disk(gateway: Gateway, path: bytes) -> None:
    c = gateway.client()
    c.send(b"MAIL FROM:<sender@remote.test>\r\n")
    with file_system_calls() as calls:
        [reply] = c.send(b"RCPT TO:" + path + b"\r\n")
    assert reply.startswith("501 5.1.3 "), reply
    assert gateway.mailbox_calls(calls) == [] and gateway.unexpected(calls) == []
    assert not os.path.exists(gateway.maildir_root)
    assert not c.transport.disconnecting


@pytest.mark.parametrize("path", BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_mail_from_with_unsafe_path_is_refused(gateway: Gateway, path: bytes) -> None:
    c = gateway.client()
    with file_system_calls() as calls:
        [reply] = c.send(b"MAIL FROM:" + path + b"\r\n")
    assert reply.startswith("501 5."), reply
    assert gateway.unexpected(calls) == [] and gateway.mailbox_calls(calls) == []
    assert c.send_codes(b"RCPT TO:<alice@example.test>\r\n") == [503]  # no transaction was started


def test_local_part_of_64_octets_is_syntax_the_limit_allows(gateway: Gateway) -> None:
    c = gateway.client()
    c.send(b"MAIL FROM:<sender@remote.test>\r\n")
    assert c.send_codes(b"RCPT TO:<" + b"a" * 64 + b"@example.test>\r\n") == [550]  # unknown, not malformed


QUOTED_VALID = [b'<"..\"@example.test>', b'<"."@example.test>', b'<"a b"@example.test>', b'<""@example.test>']


@pytest.mark.parametrize("path", QUOTED_VALID)
def test_quoted_local_parts_are_unknown_users(gateway: Gateway, path: bytes) -> None:
    """Syntactically valid, so 550 (no such user) is right; 250 never is."""
    c = gateway.client()
    c.send(b"MAIL FROM:<sender@remote.test>\r\n")
    with file_system_calls() as calls:
        [reply] = c.send(b"RCPT TO:" + path + b"\r\n")
    assert reply.startswith("550 5.1.1 "), reply
    assert gateway.mailbox_calls(calls) == [] and gateway.unexpected(calls) == []


def test_quotes_around_a_plain_local_part_name_the_same_user(gateway: Gateway) -> None:
    """RFC 5322 3.4.1: "Alice"@example.test is alice@example.test, as Postfix reads it."""
    c = gateway.client()
    c.send(b"MAIL FROM:<sender@remote.test>\r\n")
    [reply] = c.send(b'RCPT TO:<"Alice"@example.test>\r\n')
    assert reply.startswith("250 "), reply


@pytest.mark.parametrize("path", [*QUOTED_VALID, b'<"Alice"@example.test>', b"<x@[..]>", b"<x@[.]>", b"<~@example.test>", b"<%@example.test>"])
def test_a_permissive_route_still_writes_inside_maildir_root(tmp_path: Path, path: bytes) -> None:
    """Even when a plugin accepts any address, its mailbox is one directory below maildir_root/domain."""
    gateway = Gateway(tmp_path, CatchAll())
    c = gateway.client()
    with file_system_calls() as calls:
        codes = c.send_codes(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:" + path + b"\r\nDATA\r\nhi\r\n.\r\n")
    assert codes == [250, 250, 354, 250]
    assert gateway.mailbox_calls(calls), "the message was stored"
    assert gateway.unexpected(calls) == []
    [stored] = gateway.stored()
    mailbox = stored.parent.parent
    assert mailbox.parent.parent == Path(gateway.maildir_root)  # <root>/<domain>/<local>/new/<file>
    assert _inside(str(stored), gateway.maildir_root)


SOURCE_ROUTES = [b"<@a.test,@b.test:alice@example.test>", b"<@a.test:alice@example.test>",
                 b"<@a.test,@b.test:Alice@Example.Test>"]  # (At-domain is a Domain, never a literal: RFC 5321 4.1.2)


@pytest.mark.parametrize("path", SOURCE_ROUTES)
def test_source_route_is_ignored_and_mail_reaches_the_mailbox(gateway: Gateway, path: bytes) -> None:
    """RFC 5321 appendix C: the route is dropped, the mailbox is used as if given alone."""
    c = gateway.client()
    with file_system_calls() as calls:
        codes = c.send_codes(
            b"MAIL FROM:<s@remote.test>\r\nRCPT TO:" + path + b"\r\nDATA\r\nSubject: r\r\n\r\nhi\r\n.\r\n"
        )
    assert codes == [250, 250, 354, 250]
    assert gateway.unexpected(calls) == []
    [stored] = gateway.stored()
    assert stored.parent.parent == Path(gateway.maildir_root, "example.test", "alice")
    assert stored.read_bytes().endswith(b"\nSubject: r\n\nhi\n")


def test_source_route_in_mail_from_is_ignored(gateway: Gateway) -> None:
    c = gateway.client()
    assert c.send_codes(b"MAIL FROM:<@a.test,@b.test:sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                        b"DATA\r\nhi\r\n.\r\n") == [250, 250, 354, 250]
    [stored] = gateway.stored()
    assert stored.read_bytes().startswith(b"Return-Path: <sender@remote.test>\n")


def test_unsafe_recipient_does_not_spoil_the_transaction(gateway: Gateway) -> None:
    """A refused recipient among good ones: the message goes to the good ones only."""
    c = gateway.client()
    codes = c.send_codes(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<../../etc@example.test>\r\n"
                         b"RCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    assert codes == [250, 501, 250, 354, 250]
    assert [p.parent.parent.name for p in gateway.stored()] == ["alice"]


def test_vrfy_and_expn_with_unsafe_paths_are_refused(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path)
    gateway.server = Server(tmp_path, security={"vrfy": "all", "expn": "all"})
    c = gateway.client()
    with file_system_calls() as calls:
        for path in (b"<../../etc@example.test>", b"<a/b@example.test>", b"<a\x00b@example.test>"):
            assert c.send_codes(b"VRFY " + path + b"\r\nEXPN " + path + b"\r\n") == [501, 501]
    assert gateway.mailbox_calls(calls) == [] and gateway.unexpected(calls) == []


# --- the reply to a bad parameter ------------------------------------------------


def test_bad_parameter_reply_never_echoes_control_characters(gateway: Gateway) -> None:
    """A reply line must be printable ASCII; the client's \\x01, \\x1b or \\x7f are not.

    (CR and LF cannot get in, since parameters are split at whitespace, so
    no reply can be forged; tests/test_fuzz.py tolerates only this reply.)
    """
    c = gateway.client()
    [reply] = c.send(b"MAIL FROM:<a@remote.test> X=\x01\x1b[2J\x7f\r\n")
    assert reply.startswith("501 ")
    assert all(" " <= char <= "~" for char in reply), repr(reply)


# --- mailbox_path itself ----------------------------------------------------------

UNSAFE_ADDRESSES = ["..@example.test", ".@example.test", ".alice@example.test", "../x@example.test",
                    "../../etc@example.test", "a/b@example.test", "/etc/passwd@example.test", "alice@..",
                    "alice@.", "alice@../etc", "alice@example.test/..", "alice@.example.test", "@example.test",
                    "alice@", "alice", "", "a@b@..", "x@/"]


@pytest.mark.parametrize("address", UNSAFE_ADDRESSES)
def test_mailbox_path_refuses_traversal(tmp_path: Path, address: str) -> None:
    with file_system_calls() as calls, pytest.raises(ValueError):
        mailbox_path(str(tmp_path / "mail"), address)
    assert calls == []


@pytest.mark.parametrize("address", ["a\x00b@example.test", "a\nb@example.test", "a\x1bb@example.test",
                                     "alice@example\x00.test", "a\x7f@example.test"])
def test_mailbox_path_refuses_nul_and_control_characters(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError):
        mailbox_path(str(tmp_path / "mail"), address)


@pytest.mark.parametrize("address", ["alice@example.test", '"..\"@example.test', "x@[..]", "~@example.test",
                                     "a.b@example.test", "%@example.test", "a..@example.test"])
def test_mailbox_path_of_a_safe_address_stays_one_level_below_its_domain(tmp_path: Path, address: str) -> None:
    root = str(tmp_path / "mail")
    path = mailbox_path(root, address)
    local, _, domain = address.rpartition("@")
    assert path == os.path.join(root, domain, local)
    assert os.path.realpath(path) == os.path.join(os.path.realpath(root), domain, local)


def test_a_symlinked_maildir_root_is_followed_but_not_escaped(tmp_path: Path) -> None:
    """realpath check against a root that is itself a symlink (a common deployment)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = mailbox_path(str(tmp_path / "link"), "alice@example.test")
    assert _inside(path, str(tmp_path / "link")) and _inside(path, str(tmp_path / "real"))
