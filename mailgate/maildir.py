"""Durable Maildir delivery: write tmp/, fsync, link into new/, fsync new/.

The functions here block on the disk; `MaildirStore` runs them in a thread
pool so one slow fsync never stalls the reactor, and so concurrent
transactions' fsyncs overlap (the journal commits them together).
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mailgate.durable import fsync_dir, write_durably

_counter = itertools.count(1)  # next() is atomic under the GIL: safe across threads
_SUBDIRS = ("tmp", "new", "cur")


@dataclass(frozen=True)
class StoredMessage:
    """A message in its on-disk form: LF line ends, headers to prepend kept apart
    so the body is never copied to add them."""

    header: bytes
    body: Sequence[bytes]
    size: int  # octets on disk
    lines: int  # LF count, so POP3 sizes (CRLF) need no re-read

    @property
    def transit_header(self) -> bytes:
        """The header without Return-Path, for mail still in transit: only the
        final delivery adds Return-Path (RFC 5321 4.4)."""
        if self.header.startswith(b"Return-Path:"):
            return self.header[self.header.index(b"\n") + 1 :]
        return self.header

    def with_header(self, header: bytes) -> "StoredMessage":
        """The same body under other header lines (a list copy); the body is shared, not copied."""
        body_size = self.size - len(self.header)
        body_lines = self.lines - self.header.count(b"\n")
        return StoredMessage.build(header, self.body, body_size, body_lines)

    def wire_form(self) -> bytes:
        """The message as plugins get it: CRLF line ends, no Return-Path."""
        return (self.transit_header + b"".join(self.body)).replace(b"\n", b"\r\n")

    @classmethod
    def build(cls, header: bytes, body: Sequence[bytes], body_size: int, body_lines: int) -> "StoredMessage":
        return cls(header, body, len(header) + body_size, header.count(b"\n") + body_lines)


def unique_name(hostname: str, message: StoredMessage) -> str:
    """A qmail-style unique name with Dovecot's S= (disk) and W= (CRLF) sizes."""
    now = time.time()
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return (
        f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"
        f",S={message.size},W={message.size + message.lines}"
    )


def mailbox_path(root: str, address: str) -> str:
    """`<root>/<domain>/<localpart>`, for an address already validated by
    `mailgate.addresses`, which refuses '/' and leading dots."""
    local, _, domain = address.rpartition("@")
    if not local or not domain or "/" in address or local.startswith(".") or domain.startswith("."):
        raise ValueError(f"unsafe mailbox address {address!r}")
    return os.path.join(root, domain, local)


def ensure_maildir(path: str) -> None:
    """Create a Maildir and make its creation durable (fsync each new parent)."""
    if os.path.isdir(os.path.join(path, "cur")):
        return
    created = _makedirs_durably(path)
    for sub in _SUBDIRS:
        try:
            os.mkdir(os.path.join(path, sub), 0o700)
        except FileExistsError:
            continue
        created = True
    if created:
        fsync_dir(path)


def _makedirs_durably(path: str) -> bool:
    """os.makedirs, fsyncing each parent that gained an entry."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        _makedirs_durably(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    fsync_dir(parent or ".")
    return True


def deliver_durably(mailboxes: Sequence[str], message: StoredMessage, hostname: str) -> list[str]:
    """Store one copy of `message` in each Maildir; return the paths in new/.

    The data is written and fsynced once, then hard-linked into every new/
    (a copy where a link cannot cross file systems), and each new/ is fsynced
    before returning: after this, a crash loses nothing. On failure every
    link already made is removed, so a client told 4xx never gets duplicates
    and no partial file is ever visible in new/.
    """
    name = unique_name(hostname, message)
    for mailbox in mailboxes:
        ensure_maildir(mailbox)
    tmp = os.path.join(mailboxes[0], "tmp", name)
    placed: list[str] = []
    try:
        _write_file(tmp, message)
        for mailbox in mailboxes:
            target = os.path.join(mailbox, "new", name)
            _link_or_copy(tmp, target, message)
            placed.append(target)
        for directory in {os.path.dirname(p) for p in placed}:
            fsync_dir(directory)
    except BaseException:
        _remove_all(placed)
        raise
    finally:
        _remove_all([tmp])
    return placed


def _write_file(path: str, message: StoredMessage) -> None:
    write_durably(path, [message.header, *message.body])


def _link_or_copy(source: str, target: str, message: StoredMessage) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        tmp = os.path.join(os.path.dirname(os.path.dirname(target)), "tmp", os.path.basename(target))
        try:
            _write_file(tmp, message)  # a failed write (ENOSPC) must not leave a partial copy in tmp/
            os.rename(tmp, target)
        except BaseException:
            _remove_all([tmp])
            raise


def _remove_all(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # best effort: the caller is already reporting a failure


class MaildirStore:
    """Local mailboxes under `store.maildir_root`, written off the reactor thread."""

    def __init__(self, root: str, hostname: str, reactor: object, threadpool: ThreadPool) -> None:
        self.root = root
        self._hostname = hostname
        self._reactor = reactor
        self._threadpool = threadpool

    def path_for(self, address: str) -> str:
        return mailbox_path(self.root, address)

    def deliver(self, addresses: Sequence[str], message: StoredMessage) -> "Deferred[list[str]]":
        """Store one copy per distinct mailbox; fires once everything is durable."""
        mailboxes = list(dict.fromkeys(self.path_for(a) for a in addresses))
        return deferToThreadPool(
            self._reactor, self._threadpool, deliver_durably, mailboxes, message, self._hostname
        )
