"""Reading one Maildir for retrieval: listing, stable UIDs, CRLF sizes, commit."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterable
from mailgate.core.wire import CRLFConverter

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


# The names mailgate writes: seconds.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<size>[:2,flags].
_OWN_NAME = re.compile(r"(((\d+)\.M(\d+))P\d+Q\d+\.[^,:/\s]+),S=\d+,W=(\d+)(?::2,[!-~]*)?")
_QMAIL_TIME = re.compile(r"(\d+)\.(?:M(\d+))?")


def list_messages(directory: str) -> list[MessageInfo]:
    """All messages of new/ and cur/, oldest first; missing directories are empty.

    One listdir per directory and no open(): sizes come from W= in the name,
    and the names mailgate writes are parsed by one regex match each. Only
    files from other tools without W= are read, to count their lines.
    """
    rows: list[tuple[int, int, str, str, str, int]] = []
    for subdir in ("new", "cur"):
        path = os.path.join(directory, subdir)
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            continue
        for name in names:
            own = _OWN_NAME.fullmatch(name)
            if own is not None and len(own.group(1)) <= 70:
                uid, _, seconds, micros, size = own.groups()
                rows.append((int(seconds), int(micros), name, subdir, uid, int(size)))
            elif not name.startswith("."):  # Maildir readers skip dot files
                row = _foreign_row(path, subdir, name)
                if row is not None:
                    rows.append(row)
    rows.sort()
    return _unique_uids([MessageInfo(uid, subdir, name, size) for _, _, name, subdir, uid, size in rows])


def _foreign_row(path: str, subdir: str, name: str) -> tuple[int, int, str, str, str, int] | None:
    """A file another program delivered: its size may need reading."""
    size = wire_size_from_name(name)
    if size is None:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            return None
        size = wire_size_of_file(full)
    when = _QMAIL_TIME.match(name)  # numbers, not text: 999 sorts before 1000
    seconds, micros = (int(when.group(1)), int(when.group(2) or 0)) if when else (0, 0)
    return (seconds, micros, name, subdir, uid_for(name), size)


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
