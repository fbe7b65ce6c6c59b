"""`mailgate queue list|flush|delete`: the outbound queue from the command line.

When a server runs on the spool (it holds the queue lock), flush and delete
are requests it carries out within a second, so nothing races its own
writes; otherwise the CLI acts on the spool directly. Damaged entries (in
corrupt/, or in env/ and not yet tried) are listed with their reason, and
one bad file never hides the rest of the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from mailgate.config import load_config
from mailgate.outbound.spool import DamagedEntry, QueuedMessage, QueueStore
from mailgate.store.durable import inherited_owner

REQUEST_DEADLINE_SECONDS = 15.0


class CommandError(Exception):
    """An expected failure; main() prints it as one line and exits 1."""


@dataclass(frozen=True)
class Damaged:
    """A queue entry that cannot be delivered as it is, and what could be read of it."""

    queue_id: str
    reason: str
    entry: QueuedMessage | None


def add_queue_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    queue = commands.add_parser("queue", help="inspect and steer the outbound queue", parents=[common])
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list queued messages", parents=[common])
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(handler=_list)
    actions.add_parser("flush", help="try every queued message now", parents=[common]).set_defaults(handler=_flush)
    delete = actions.add_parser("delete", help="remove a queued message (no bounce)", parents=[common])
    delete.add_argument("queue_id", metavar="ID")
    delete.set_defaults(handler=_delete)


def _store(args: argparse.Namespace) -> QueueStore:
    config = load_config(args.config)
    return QueueStore(os.path.join(config.server.state_dir, "queue"))


@contextmanager
def _as_owner_of(directory: str) -> Iterator[None]:
    """Root acts on a spool as the user it belongs to (seteuid), so that what it
    writes there (requests, rewritten entries, the lock file) stays the
    server's: a server started with --uid/--gid could not read files of root's."""
    uid, gid = inherited_owner(directory)
    if os.geteuid() != 0 or uid == 0:
        yield
        return
    saved_gid = os.getegid()
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(saved_gid)


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    entries, damaged = survey(store)
    items = [describe(entry) for entry in sorted(entries, key=lambda e: e.arrived)]
    items += [describe_damaged(item) for item in damaged]
    if not items:  # on stderr: stdout stays what --json or a script expects
        missing = "" if os.path.isdir(store.directory) else " (no such directory)"
        print(f"mailgate: the queue is empty: {os.path.abspath(store.directory)}{missing}", file=sys.stderr)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for item in items:
        if item["corrupt"]:
            print(f"{item['id']}  corrupt: {item['reason']}")
        else:
            print(f"{item['id']}  {item['arrived']}  <{item['sender']}>  attempts={item['attempts']}  "
                  f"next={item['next_attempt']}")
        for recipient in item["recipients"]:
            print(f"    {recipient}")
        if item["last_error"]:
            print(f"    last error: {item['last_error']}")
    return 0


def survey(store: QueueStore) -> tuple[list[QueuedMessage], list[Damaged]]:
    """The entries in env/, and the damaged ones: those in corrupt/ and those in env/
    whose envelope cannot be read or whose message is missing or of another length
    (a stat; the checksum is read by the server before each attempt)."""
    entries, damaged = [], []
    for queue_id in sorted(store.ids()):
        entry = None
        try:
            entry = store.load(queue_id)
            if entry is not None:
                store.check_message(entry, checksum=False)
                entries.append(entry)
        except DamagedEntry as damage:
            damaged.append(Damaged(queue_id, str(damage), entry))
    for queue_id in store.corrupt.ids():
        aside = store.corrupt.read(queue_id)
        try:
            readable = QueuedMessage.from_json(aside.envelope or b"", queue_id)
        except DamagedEntry:
            readable = None
        damaged.append(Damaged(queue_id, aside.reason, readable))
    return entries, damaged


def describe(entry: QueuedMessage) -> dict:
    """The SPEC's `queue list --json` object for one entry, with `corrupt` false."""
    return {
        "id": entry.id,
        "sender": entry.sender,
        "recipients": [r.address for r in entry.pending()],
        "attempts": entry.attempts,
        "arrived": _iso(entry.arrived),
        "next_attempt": _iso(entry.next_attempt),
        "last_error": entry.last_error,
        "corrupt": False,
        "reason": None,
    }


def describe_damaged(item: Damaged) -> dict:
    """A damaged entry's object: what could be read of it (null where nothing could), and why."""
    if item.entry is not None:
        described = describe(item.entry)
    else:
        described = {"id": item.queue_id, "sender": None, "recipients": [], "attempts": None,
                     "arrived": None, "next_attempt": None, "last_error": None}
    return {**described, "corrupt": True, "reason": item.reason}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _flush(args: argparse.Namespace) -> int:
    store = _store(args)
    with _as_owner_of(store.directory):
        return _flush_store(store)


def _flush_store(store: QueueStore) -> int:
    if store.lock():
        try:
            count = _mark_all_due(store)
        finally:
            store.unlock()
        print(f"mailgate is not running: {count} queued message(s) will be tried when it starts")
        return 0
    _ask_server(store, "flush")
    print("queue flush: the running server is trying every queued message")
    return 0


def _mark_all_due(store: QueueStore) -> int:
    now, count = time.time(), 0
    for entry in store.entries():
        entry.next_attempt, count = now, count + 1
        store.save(entry)
    return count


def _delete(args: argparse.Namespace) -> int:
    store = _store(args)
    with _as_owner_of(store.directory):
        return _delete_from(store, args.queue_id)


def _delete_from(store: QueueStore, queue_id: str) -> int:
    if "/" in queue_id or "." in queue_id or not store.exists(queue_id):
        raise CommandError(f"no queued message {queue_id}")
    if store.lock():
        try:
            store.remove(queue_id)
        finally:
            store.unlock()
    else:
        _ask_server(store, "delete", queue_id)
    print(f"deleted {queue_id}")
    return 0


def _ask_server(store: QueueStore, action: str, queue_id: str = "") -> None:
    """File a request and wait until the running server has carried it out."""
    path = store.request(action, queue_id)
    deadline = time.monotonic() + REQUEST_DEADLINE_SECONDS
    while os.path.exists(path):
        if time.monotonic() > deadline:
            raise CommandError(f"the running server did not carry out '{action}' in time; it stays requested")
        time.sleep(0.05)

