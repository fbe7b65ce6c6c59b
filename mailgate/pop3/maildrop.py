"""One user's maildrop during a POP3 session: the lock, the numbered listing, the marks, UPDATE.

RFC 1939 numbers the messages once, at login, and keeps deletions as marks
until QUIT; this module owns those rules, and the lock that keeps a second
session from deleting under the first one's numbers (section 8).
"""

from __future__ import annotations

import fcntl
import os
import weakref

from twisted.logger import Logger

from mailgate.accounts.cred import BlockingRunner
from mailgate.store.maildir_reader import MessageInfo, commit, list_messages
from mailgate.store.maildir_writer import mailbox_path

log = Logger()

IN_USE = b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
SYS_TEMP = b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more information."


class MailboxLocks(set[str]):
    """Addresses with a POP3 session past login, for one store (a set that can be weakly referenced)."""


_LOCKS_BY_STORE: weakref.WeakValueDictionary[str, MailboxLocks] = weakref.WeakValueDictionary()


def shared_locks(maildir_root: str) -> MailboxLocks:
    """The lock table of one Maildir store, shared by every POP3 listener over it.

    A gateway has a factory per listener (STLS and implicit TLS); a lock per
    factory would let one session on each delete under the other's feet.
    """
    key = os.path.realpath(maildir_root)
    locks = _LOCKS_BY_STORE.get(key)
    if locks is None:
        locks = _LOCKS_BY_STORE[key] = MailboxLocks()
    return locks


class MaildropUnavailable(Exception):
    """Login succeeded but the maildrop can't be opened; `reply` is the line for the client."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


class Maildrop:
    """The messages listed at login, by number, with the marks made since.

    Indexes are 0-based; the client's message numbers are index + 1.
    """

    def __init__(self, mailboxes: Mailboxes, address: str, directory: str, messages: list[MessageInfo]) -> None:
        self.address = address
        self.messages = messages
        self._mailboxes = mailboxes
        self._directory = directory
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()
        self._locked = True

    def live(self) -> list[tuple[int, MessageInfo]]:
        """(index, message) for each message not marked deleted."""
        return [(i, m) for i, m in enumerate(self.messages) if i not in self._deleted]

    def is_deleted(self, index: int) -> bool:
        return index in self._deleted

    def mark_deleted(self, index: int) -> None:
        self._deleted.add(index)

    def mark_retrieved(self, index: int) -> None:
        """RETR (not TOP) moves the message to cur/ at QUIT: a Maildrop reader then sees it read."""
        self._retrieved.add(index)

    @property
    def marked_deleted(self) -> int:
        """How many messages DELE marked (deleted at QUIT)."""
        return len(self._deleted)

    def undelete_all(self) -> None:
        self._deleted.clear()

    def path(self, index: int) -> str:
        return self.messages[index].path(self._directory)

    async def commit(self) -> list[MessageInfo]:
        """Delete and move what is marked (RFC 1939 section 6); the messages that could not be deleted."""
        delete = [self.messages[i] for i in sorted(self._deleted)]
        seen = [self.messages[i] for i in sorted(self._retrieved)]
        undeleted: list[MessageInfo] = await self._mailboxes.run_blocking(commit, self._directory, delete, seen)
        return undeleted

    def release(self) -> None:
        """Give the mailbox back to other sessions; nothing marked is deleted. Idempotent."""
        if self._locked:
            self._locked = False
            self._mailboxes.unlock(self.address)


class Mailboxes:
    """Opens maildrops in one Maildir store, one session per mailbox at a time."""

    def __init__(self, maildir_root: str, run_blocking: BlockingRunner) -> None:
        self.maildir_root = maildir_root
        self.run_blocking = run_blocking
        self.locks = shared_locks(maildir_root)
        self._files: dict[str, int] = {}  # address -> its file lock's descriptor (lock_and_list)

    async def open(self, address: str) -> Maildrop:
        """Lock and list `address`'s mailbox; MaildropUnavailable when it can't be."""
        try:
            directory = mailbox_path(self.maildir_root, address)
        except ValueError:
            log.warn("POP3 login {address!r} has no usable mailbox path", address=address)
            raise MaildropUnavailable(b"-ERR [SYS/PERM] Mailbox name is not usable.") from None
        if address in self.locks:
            raise MaildropUnavailable(IN_USE)
        self.locks.add(address)
        try:
            locked, messages = await self.run_blocking(lock_and_list, directory)
        except Exception:
            log.failure("POP3 listing of {address} failed", address=address)
            self.unlock(address)
            raise MaildropUnavailable(SYS_TEMP) from None
        if locked is None:
            self.unlock(address)
            raise MaildropUnavailable(IN_USE)
        self._files[address] = locked
        return Maildrop(self, address, directory, messages)

    def unlock(self, address: str) -> None:
        self.locks.discard(address)
        locked = self._files.pop(address, None)
        if locked is not None:
            os.close(locked)  # closing releases the flock


def lock_and_list(directory: str) -> tuple[int | None, list[MessageInfo]]:
    """Take the mailbox's file lock and list it: (the lock's descriptor, the messages), or
    (None, []) when a session in another process holds it.

    The lock set above only knows this process's sessions; with server.workers
    > 1, or nodes sharing maildir_root, a session elsewhere must lock the
    mailbox too. flock on `<mailbox>.pop3.lock`, beside the Maildir (never in
    it: nothing there but the Maildir's own): released by the kernel when the
    process dies, and carried by NFS as a POSIX lock on Linux.
    """
    path = directory.rstrip("/") + ".pop3.lock"
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None, []
    try:
        return descriptor, list_messages(directory)
    except BaseException:
        os.close(descriptor)
        raise
