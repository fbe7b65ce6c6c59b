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
from typing import Callable, Iterable, Sequence

from twisted.internet.defer import Deferred

from mailgate.store.group_commit import Batcher
from mailgate.store.durable import fsync_dir, sync_paths, write_durably

_counter = itertools.count(1)  # next() is atomic under the GIL: safe across threads
_SUBDIRS = ("tmp", "new", "cur")
TMP_MAX_AGE_SECONDS = 36 * 3600  # qmail's rule for files left in tmp/
_swept: set[str] = set()  # mailboxes whose tmp/ this process has cleaned


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
    host = _safe_host(hostname)
    return (
        f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"
        f",S={message.size},W={message.size + message.lines}"
    )


def _safe_host(hostname: str) -> str:
    """The host part of a unique name: '/' and ':' escaped as qmail does."""
    return hostname.replace("/", r"\057").replace(":", r"\072")


def mailbox_path(root: str, address: str) -> str:
    """`<root>/<domain>/<localpart>`, for an address already validated by
    `mailgate.core.addresses`, which refuses '/' and leading dots."""
    local, _, domain = address.rpartition("@")
    unsafe = "/" in address or any(char < " " or char == "\x7f" for char in address)
    if not local or not domain or unsafe or local.startswith(".") or domain.startswith("."):
        raise ValueError(f"unsafe mailbox address {address!r}")
    return os.path.join(root, domain, local)


def sweep_tmp(mailbox: str, now: float | None = None) -> int:
    """Remove what crashes left in tmp/ long ago; return how many files went.

    Only files untouched for 36 hours go (qmail's rule), whoever wrote them:
    another process of this server (workers), another node sharing the
    Maildir, or another program may be writing any younger file right now,
    and a name's host and process id prove nothing across machines. Run
    once per mailbox per process, on its first delivery, so start-up never
    walks every mailbox.
    """
    tmp, removed = os.path.join(mailbox, "tmp"), 0
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(tmp))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if now - entry.stat().st_mtime > TMP_MAX_AGE_SECONDS:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


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


Copy = tuple[Sequence[str], StoredMessage]  # Maildirs, and the message each gets


def deliver_durably(mailboxes: Sequence[str], message: StoredMessage, hostname: str) -> list[str]:
    """Store one copy of `message` in each Maildir; return the paths in new/."""
    [result] = deliver_batch([[(mailboxes, message)]], hostname)
    if isinstance(result, BaseException):
        raise result
    return result


def deliver_batch(jobs: Sequence[Sequence[Copy]], hostname: str) -> list[list[str] | BaseException]:
    """Store many transactions' messages with one group commit; per job, its new/ paths or its error.

    A job is one transaction: every message it holds (the original, list
    copies) is stored or none is. Every message is written to tmp/, then
    one sync makes all the data durable; only then are the messages
    hard-linked into each new/ (a copy where a link cannot cross file
    systems), and a second sync makes those entries durable. A crash at any
    point leaves no partial file in new/, and nothing is reported stored
    before it would survive one. A job that fails has every link it made
    removed, so a client told 4xx never gets duplicates.
    """
    results: list[list[str] | BaseException] = [[] for _ in jobs]
    written: list[tuple[int, str, Copy]] = []
    for index, copies in enumerate(jobs):
        try:
            for copy in copies:
                written.append((index, _write_tmp(*copy, hostname), copy))
        except Exception as exc:
            results[index] = exc
    touched: set[str] = set()
    try:
        sync_paths(tmp for index, tmp, _ in written if isinstance(results[index], list))
        for index, tmp, (mailboxes, message) in written:
            _link_into(results, index, _link_everywhere(tmp, mailboxes, message), touched)
        sync_paths(touched)
    except Exception as exc:  # a failed sync: nothing of this batch is known durable
        for index, result in enumerate(results):
            if isinstance(result, list):
                _remove_all(result)
                results[index] = exc
    finally:
        _remove_all(tmp for _, tmp, _ in written)
    return results


def _link_into(results: list[list[str] | BaseException], index: int, placed: list[str] | BaseException,
               touched: set[str]) -> None:
    """Record one copy's links in its job; a failed copy undoes the job's others."""
    so_far = results[index]
    if isinstance(so_far, BaseException):
        if isinstance(placed, list):
            _remove_all(placed)
        return
    if isinstance(placed, BaseException):
        _remove_all(so_far)
        results[index] = placed
        return
    so_far.extend(placed)
    touched.update(os.path.dirname(path) for path in placed)


def _write_tmp(mailboxes: Sequence[str], message: StoredMessage, hostname: str) -> str:
    for mailbox in mailboxes:
        ensure_maildir(mailbox)
        if mailbox not in _swept:
            _swept.add(mailbox)
            sweep_tmp(mailbox)
    tmp = os.path.join(mailboxes[0], "tmp", unique_name(hostname, message))
    try:
        write_durably(tmp, [message.header, *message.body], fsync=False)
    except BaseException:
        _remove_all([tmp])
        raise
    return tmp


def _link_everywhere(tmp: str, mailboxes: Sequence[str], message: StoredMessage) -> list[str] | BaseException:
    name = os.path.basename(tmp)
    placed: list[str] = []
    try:
        for mailbox in mailboxes:
            target = os.path.join(mailbox, "new", name)
            _link_or_copy(tmp, target, message)
            placed.append(target)
    except Exception as exc:
        _remove_all(placed)
        return exc
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

    def __init__(self, root: str, hostname: str, run_blocking: Callable[..., Deferred]) -> None:
        self.root = root
        self._batcher: Batcher = Batcher(run_blocking, lambda jobs: deliver_batch(jobs, hostname))

    def path_for(self, address: str) -> str:
        return mailbox_path(self.root, address)

    def deliver(self, addresses: Sequence[str], message: StoredMessage) -> "Deferred[list[str]]":
        """Store one copy per distinct mailbox; fires once everything is durable."""
        return self.deliver_all([(addresses, message)])

    def deliver_all(self, copies: Sequence[tuple[Sequence[str], StoredMessage]]) -> "Deferred[list[str]]":
        """Store each message in its mailboxes, all or none; fires once everything is durable.

        Deliveries share group commits (`mailgate.store.group_commit`): under load many
        transactions share each sync; alone, a message is committed at once.
        """
        job = [(list(dict.fromkeys(self.path_for(a) for a in addresses)), message) for addresses, message in copies]
        return self._batcher.submit(job)
