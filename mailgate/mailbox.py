"""Reading one Maildir for retrieval: listing, stable UIDs, CRLF sizes, commit."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterable
from mailgate.wire import CRLFConverter

BLOCK_SIZE = 64 * 1024
INFO_SEPARATOR = ":2,"


@dataclass(frozen=True)
class MessageInfo:
    """One message as listed at login; the file is not opened to build it."""

    uid: str  # stable across new/ -> cur/ and flag changes
    subdir: str  # "new" or "cur"
    name: str  # file name inside subdir
    size: int  # octets with CRLF line ends, as POP3 sends them

    def path(self, mailbox_dir: str) -> str:
        return os.path.join(mailbox_dir, self.subdir, self.name)


def base_name(name: str) -> str:
    """The unique part of a Maildir file name: no ":2,flags", no ",S=" / ",W=".

    Delivery adds S=/W= and readers add flags, so neither may change the UID.
    """
    unique = name.split(INFO_SEPARATOR, 1)[0]
    fields = unique.split(",")
    return ",".join([fields[0]] + [f for f in fields[1:] if not f.startswith(("S=", "W="))])


def uid_for(name: str) -> str:
    """A UIDL value: RFC 1939 allows 1-70 printable characters, no space."""
    unique = base_name(name)
    if 0 < len(unique) <= 70 and unique.isascii() and unique.isprintable() and " " not in unique:
        return unique
    return hashlib.sha1(unique.encode("utf-8", "surrogateescape")).hexdigest()


def wire_size_from_name(name: str) -> int | None:
    """The W= value (size with CRLF line ends) from a file name, if present."""
    for field in name.split(INFO_SEPARATOR, 1)[0].split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return None


def list_messages(directory: str) -> list[MessageInfo]:
    """All messages of new/ and cur/, oldest first; missing directories are empty.

    One scandir per directory and no open(): sizes come from W= in the name.
    Only files from other tools without W= are read, to count their lines.
    """
    messages = []
    for subdir in ("new", "cur"):
        path = os.path.join(directory, subdir)
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # Maildir readers skip dot files
            size = wire_size_from_name(entry.name)
            if size is None:
                if not entry.is_file():
                    continue
                size = wire_size_of_file(entry.path)
            messages.append(MessageInfo(uid_for(entry.name), subdir, entry.name, size))
    messages.sort(key=_delivery_order)
    return _unique_uids(messages)


_QMAIL_TIME = re.compile(r"(\d+)\.(?:M(\d+))?")


def _delivery_order(message: MessageInfo) -> tuple[int, int, str]:
    """qmail names start with seconds then M<microseconds>: compared as numbers,
    since neither is zero-padded (999 must sort before 1000)."""
    match = _QMAIL_TIME.match(message.name)
    if match is None:
        return (0, 0, message.name)
    return (int(match.group(1)), int(match.group(2) or 0), message.name)


def _unique_uids(messages: list[MessageInfo]) -> list[MessageInfo]:
    """The same base name in new/ and cur/ (a broken tool) must not share a UID."""
    seen: set[str] = set()
    result = []
    for message in messages:
        if message.uid in seen:
            uid = hashlib.sha1(f"{message.subdir}/{message.name}".encode("utf-8", "surrogateescape")).hexdigest()
            message = MessageInfo(uid, message.subdir, message.name, message.size)
        seen.add(message.uid)
        result.append(message)
    return result


def wire_size_of_file(path: str) -> int:
    """Octets the file takes with every line end as CRLF (for names without W=)."""
    converter = CRLFConverter()
    total = 0
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_SIZE):
            total += len(converter.feed(block))
    return total + len(converter.finish())


def commit(directory: str, delete: Iterable[MessageInfo], seen: Iterable[MessageInfo]) -> list[MessageInfo]:
    """Apply a POP3 session's UPDATE state: delete, then mark retrieved ones read.

    Returns the messages that could not be deleted (RFC 1939 wants the client
    told). A message already gone counts as deleted; a failed move to cur/ is
    harmless (the message is merely shown as unread again).
    """
    undeleted = []
    deleted = set()
    for message in delete:
        try:
            os.unlink(message.path(directory))
        except FileNotFoundError:
            pass
        except OSError:
            undeleted.append(message)
            continue
        deleted.add(message.uid)
    for message in seen:
        if message.subdir != "new" or message.uid in deleted:
            continue
        target = os.path.join(directory, "cur", message.name.split(INFO_SEPARATOR, 1)[0] + INFO_SEPARATOR + "S")
        try:
            os.rename(message.path(directory), target)
        except OSError:
            pass
    return undeleted
