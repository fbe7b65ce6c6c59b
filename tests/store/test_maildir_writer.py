"""Tests for mailgate.store.maildir_writer: durable delivery into real Maildirs in temporary directories."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from mailgate.store import maildir_writer as maildir
from mailgate.store.maildir_writer import (
    MaildirStore,
    StoredMessage,
    deliver_durably,
    ensure_maildir,
    mailbox_path,
)

HEADER = b"Return-Path: <bob@remote.test>\nReceived: from x\n"
BODY = [b"Subject: hi\n\n", b"line one\n", b"line two\n"]


def message(header: bytes = HEADER, body: list[bytes] = BODY) -> StoredMessage:
    joined = b"".join(body)
    return StoredMessage.build(header, body, len(joined), joined.count(b"\n"))


def entries(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.is_dir() else []


def test_build_counts_header_and_body() -> None:
    stored = message()
    content = HEADER + b"".join(BODY)
    assert stored.size == len(content)
    assert stored.lines == content.count(b"\n")


def test_single_mailbox_gets_one_file_in_new(tmp_path: Path) -> None:
    box = tmp_path / "example.test" / "alice"
    [placed] = deliver_durably([str(box)], message(), "mx.example.test")
    assert Path(placed).parent == box / "new"
    assert entries(box / "new") == [Path(placed).name]
    assert entries(box / "tmp") == []
    assert entries(box / "cur") == []
    assert Path(placed).read_bytes() == HEADER + b"".join(BODY)


def test_name_carries_sizes_that_match_the_file(tmp_path: Path) -> None:
    """Dovecot's S= is the size on disk, W= the size with CRLF line ends."""
    [placed] = deliver_durably([str(tmp_path / "box")], message(), "mx.example.test")
    name = Path(placed).name
    match = re.fullmatch(r"\d+\.M\d+P\d+Q\d+\.mx\.example\.test,S=(\d+),W=(\d+)", name)
    assert match, name
    content = Path(placed).read_bytes()
    assert int(match[1]) == len(content) == os.path.getsize(placed)
    assert int(match[2]) == len(content.replace(b"\n", b"\r\n"))


def test_hostname_slash_and_colon_escaped_in_name(tmp_path: Path) -> None:
    [placed] = deliver_durably([str(tmp_path / "box")], message(), "a/b:c")
    assert Path(placed).parent == tmp_path / "box" / "new"
    assert r".a\057b\072c," in Path(placed).name


def test_names_are_unique(tmp_path: Path) -> None:
    boxes = [str(tmp_path / "box")]
    names = {Path(deliver_durably(boxes, message(), "h")[0]).name for _ in range(50)}
    assert len(names) == 50
    assert len(entries(tmp_path / "box" / "new")) == 50


def test_several_mailboxes_get_hard_links(tmp_path: Path) -> None:
    boxes = [tmp_path / "example.test" / "alice", tmp_path / "example.test" / "bob", tmp_path / "other" / "carol"]
    placed = deliver_durably([str(b) for b in boxes], message(), "h")
    assert [Path(p).parent for p in placed] == [b / "new" for b in boxes]
    for box in boxes:
        assert entries(box) == ["cur", "new", "tmp"]
        assert entries(box / "tmp") == []
    inodes = {os.stat(p).st_ino for p in placed}
    assert len(inodes) == 1
    assert os.stat(placed[0]).st_nlink == 3  # the tmp/ name is gone
    assert Path(placed[2]).read_bytes() == HEADER + b"".join(BODY)


def test_existing_maildir_is_reused(tmp_path: Path) -> None:
    box = tmp_path / "box"
    first = deliver_durably([str(box)], message(), "h")
    second = deliver_durably([str(box)], message(), "h")
    assert sorted(entries(box / "new")) == sorted(Path(p).name for p in first + second)


def test_ensure_maildir_completes_a_partial_one(tmp_path: Path) -> None:
    box = tmp_path / "box"
    (box / "new").mkdir(parents=True)
    ensure_maildir(str(box))
    assert entries(box) == ["cur", "new", "tmp"]


def test_failure_in_second_mailbox_leaves_nothing(tmp_path: Path) -> None:
    """A client told 4xx must find no copy anywhere, and tmp/ must be clean."""
    first, second = tmp_path / "a" / "first", tmp_path / "a" / "second"
    for sub in ("tmp", "cur"):
        (second / sub).mkdir(parents=True)
    (second / "new").write_bytes(b"not a directory")  # linking into it fails, even as root
    with pytest.raises(OSError):
        deliver_durably([str(first), str(second)], message(), "h")
    assert entries(first / "new") == []
    assert entries(first / "tmp") == []
    assert entries(second / "tmp") == []
    assert (second / "new").read_bytes() == b"not a directory"


def test_failure_in_cross_device_copy_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a link cannot be made the copy goes through tmp/; a failed copy is cleaned up too."""
    first, second = tmp_path / "first", tmp_path / "second"
    real_link, real_write = os.link, maildir._write_file

    def link(source: str, target: str) -> None:
        if target.startswith(str(second)):
            raise OSError(18, "Invalid cross-device link")  # EXDEV
        real_link(source, target)

    def write(path: str, stored: StoredMessage) -> None:
        real_write(path, stored)
        if path.startswith(str(second)):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(maildir, "_write_file", write)
    with pytest.raises(OSError):
        deliver_durably([str(first), str(second)], message(), "h")
    for box in (first, second):
        assert entries(box / "new") == []
        assert entries(box / "tmp") == []


def test_cross_device_copy_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    real_link = os.link

    def link(source: str, target: str) -> None:
        if target.startswith(str(second)):
            raise OSError(18, "Invalid cross-device link")
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    placed = deliver_durably([str(first), str(second)], message(), "h")
    assert os.stat(placed[0]).st_ino != os.stat(placed[1]).st_ino
    assert Path(placed[1]).read_bytes() == HEADER + b"".join(BODY)
    assert entries(second / "tmp") == []


def test_sync_order_data_then_link_then_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data is durable before the link exists; the link is durable before returning."""
    events: list[tuple[str, object]] = []
    real_sync, real_link = maildir.sync_paths, os.link

    def sync_paths(paths) -> None:
        paths = sorted(paths)
        events.append(("sync", paths))
        real_sync(paths)

    def link(source: str, target: str) -> None:
        events.append(("link", target))
        real_link(source, target)

    monkeypatch.setattr(maildir, "sync_paths", sync_paths)
    monkeypatch.setattr(os, "link", link)
    box = tmp_path / "box"
    ensure_maildir(str(box))
    [placed] = deliver_durably([str(box)], message(), "h")
    tmp_file = str(box / "tmp" / Path(placed).name)
    assert events == [("sync", [tmp_file]), ("link", placed), ("sync", [str(box / "new")])]


def test_a_batch_shares_its_syncs_and_isolates_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[list[str]] = []
    real_sync = maildir.sync_paths
    monkeypatch.setattr(maildir, "sync_paths", lambda paths: (syncs.append(sorted(paths)), real_sync(paths)))
    good, bad = tmp_path / "good", tmp_path / "bad"
    ensure_maildir(str(bad))
    (bad / "new").rmdir()
    (bad / "new").write_text("not a directory")  # linking into it fails
    results = maildir.deliver_batch(
        [[([str(good)], message(body=[b"one\n"]))], [([str(bad)], message(body=[b"two\n"]))],
         [([str(good)], message(body=[b"three\n"]))]], "h"
    )
    assert isinstance(results[1], OSError)
    assert [len(os.listdir(good / "new")), len(syncs)] == [2, 2]  # two messages, one data sync, one entry sync
    assert sorted(Path(p).read_bytes().splitlines()[-1] for p in results[0] + results[2]) == [b"one", b"three"]
    assert os.listdir(good / "tmp") == [] and os.listdir(bad / "tmp") == []


def test_a_transaction_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    """One job holds a transaction's copies (a list copy and the original): a copy
    that cannot be stored takes the others of its job with it, not other jobs'."""
    good, bad, other = tmp_path / "good", tmp_path / "bad", tmp_path / "other"
    ensure_maildir(str(bad))
    (bad / "new").rmdir()
    (bad / "new").write_text("not a directory")
    results = maildir.deliver_batch(
        [[([str(good)], message(body=[b"copy\n"])), ([str(bad)], message(body=[b"original\n"]))],
         [([str(other)], message(body=[b"unrelated\n"]))]], "h"
    )
    assert isinstance(results[0], OSError)
    assert os.listdir(good / "new") == []  # the first copy was linked, then removed again
    assert len(results[1]) == 1 and len(os.listdir(other / "new")) == 1
    assert os.listdir(good / "tmp") == [] and os.listdir(bad / "tmp") == []


def test_new_maildir_creation_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    box = tmp_path / "example.test" / "alice"
    ensure_maildir(str(box))
    assert str(tmp_path) in synced  # gained example.test
    assert str(tmp_path / "example.test") in synced  # gained alice
    assert str(box) in synced  # gained tmp, new, cur


@pytest.mark.parametrize(
    "address",
    ["../x@example.test", "a/b@example.test", "a@../etc", ".hidden@example.test", "a@.example.test",
     "@example.test", "alice@", "alice", "a@b/c"],
)
def test_mailbox_path_refuses_unsafe_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        mailbox_path("/var/mail", address)


def test_mailbox_path_layout() -> None:
    assert mailbox_path("/var/mail", "alice@example.test") == "/var/mail/example.test/alice"


class MaildirStoreTests(TestCase):
    """MaildirStore runs the blocking work in a real thread pool."""

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=2, name="maildir-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.root = Path(tempfile.mkdtemp()) / "mail"  # not trial's mktemp: that writes below the cwd
        self.addCleanup(shutil.rmtree, self.root.parent)
        self.store = MaildirStore(str(self.root), "mx.example.test", lambda f, *a: deferToThreadPool(reactor, self.pool, f, *a))

    def test_deliver_fires_with_paths_once_stored(self):
        d = self.store.deliver(["alice@example.test", "alice@example.test", "bob@example.test"], message())

        def check(placed: list[str]) -> None:
            self.assertEqual(
                [Path(p).parent for p in placed],
                [self.root / "example.test" / "alice" / "new", self.root / "example.test" / "bob" / "new"],
            )
            for path in placed:
                self.assertEqual(Path(path).read_bytes(), HEADER + b"".join(BODY))

        return d.addCallback(check)

    def test_deliver_refuses_unsafe_address_before_touching_disk(self) -> None:
        with self.assertRaises(ValueError):
            self.store.deliver(["../x@example.test"], message())
        self.assertFalse(self.root.exists())

    def test_deliver_failure_errbacks(self):
        box = self.root / "example.test" / "alice"
        for sub in ("tmp", "cur"):
            (box / sub).mkdir(parents=True)
        (box / "new").write_bytes(b"")
        d = self.store.deliver(["alice@example.test"], message())
        self.assertFailure(d, OSError)
        return d.addCallback(lambda _: self.assertEqual(entries(box / "tmp"), []))


def test_deliveries_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    """Group commit: one batch at a time; what arrives meanwhile waits and goes together."""
    commits: list[tuple[list, Deferred]] = []

    def run_blocking(function, jobs):
        d: Deferred = Deferred()
        commits.append((jobs, d))
        return d

    store = MaildirStore(str(tmp_path), "h", run_blocking)
    first = store.deliver(["a@x.test"], message())
    second = store.deliver(["b@x.test"], message())
    third = store.deliver(["c@x.test"], message())
    assert [len(jobs) for jobs, _ in commits] == [1]
    commits[0][1].callback(maildir.deliver_batch(commits[0][0], "h"))
    assert len(result_of(first)) == 1
    assert [len(jobs) for jobs, _ in commits] == [1, 2]
    jobs, pending = commits[1]
    pending.callback([["p2"], OSError(28, "No space left on device")])
    assert result_of(second) == ["p2"]
    assert result_of(third).value.errno == 28  # a Failure wrapping the OSError


def result_of(d: Deferred) -> object:
    """What a fired Deferred holds (a Failure when it failed), consumed."""
    results: list[object] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_sweep_removes_only_what_no_one_can_still_be_writing(tmp_path: Path) -> None:
    """Only files untouched for 36 hours go: another worker or node of the same
    host name may be writing a young one right now (issue #18: deliveries of a
    second process failed when its tmp/ files were swept away)."""
    box = tmp_path / "box"
    ensure_maildir(str(box))
    other_process = box / "tmp" / f"1700000000.M5P{os.getpid() + 1}Q1.h,S=1,W=1"
    in_flight = box / "tmp" / f"1700000000.M5P{os.getpid()}Q2.h,S=1,W=1"
    old_leftover = box / "tmp" / f"1600000000.M5P{os.getpid() + 1}Q3.h,S=1,W=1"
    foreign_new, foreign_old = box / "tmp" / "procmail.123", box / "tmp" / "procmail.456"
    for path in (other_process, in_flight, old_leftover, foreign_new, foreign_old):
        path.write_bytes(b"x")
    for path in (old_leftover, foreign_old):
        os.utime(path, (1, 1))
    assert maildir.sweep_tmp(str(box)) == 2
    assert sorted(p.name for p in (box / "tmp").iterdir()) == sorted(
        [other_process.name, in_flight.name, foreign_new.name])


def test_first_delivery_to_a_mailbox_sweeps_its_tmp(tmp_path: Path) -> None:
    box = tmp_path / "swept"
    ensure_maildir(str(box))
    leftover = box / "tmp" / f"1700000000.M5P{os.getpid() + 1}Q1.h,S=1,W=1"
    leftover.write_bytes(b"half a message")
    os.utime(leftover, (1, 1))  # a crash's, long ago
    deliver_durably([str(box)], message(), "h")
    assert not leftover.exists()


DELIVERING_CHILD = """
import sys
from mailgate.store.maildir_writer import StoredMessage, deliver_durably
body = b"Subject: x\\n\\n" + b"y" * 20000 + b"\\n"
failures = 0
for n in range(int(sys.argv[2])):
    try:
        deliver_durably([sys.argv[1]], StoredMessage.build(b"", [body], len(body), body.count(b"\\n")), "same.host")
    except OSError as exc:
        failures += 1
        print(exc, file=sys.stderr)
sys.exit(1 if failures else 0)
"""


def test_processes_of_one_host_delivering_to_one_maildir_never_spoil_each_other(tmp_path: Path) -> None:
    """Workers, or nodes sharing maildir_root under one server.hostname: each starts
    with a sweep of tmp/ while the others are writing there; none may lose a file."""
    box = tmp_path / "shared"
    ensure_maildir(str(box))
    children = []
    for _ in range(8):  # started one after another, so each one's first sweep meets the others' writes
        children.append(subprocess.Popen([sys.executable, "-c", DELIVERING_CHILD, str(box), "60"],
                                         stderr=subprocess.PIPE, text=True))
    results = [(child.wait(timeout=120), child.stderr.read() if child.stderr else "") for child in children]
    assert [code for code, _ in results] == [0] * 8, [err for _, err in results if err][:2]
    assert len(os.listdir(box / "new")) == 8 * 60 and os.listdir(box / "tmp") == []
