"""`mailgate queue list|flush|delete`: the outbound queue from the command line.

When a server runs on the spool (it holds the queue lock), flush and delete
are requests it carries out within a second, so nothing races its own
writes; otherwise the CLI acts on the spool directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from mailgate.config import load_config
from mailgate.outbound.spool import QueuedMessage, QueueStore
from mailgate.store.durable import inherited_owner

REQUEST_DEADLINE_SECONDS = 15.0


class CommandError(Exception):
    """An expected failure; main() prints it as one line and exits 1."""


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
    entries = sorted(store.entries(), key=lambda e: e.arrived)
    if not entries:  # on stderr: stdout stays what --json or a script expects
        missing = "" if os.path.isdir(store.directory) else " (no such directory)"
        print(f"mailgate: the queue is empty: {os.path.abspath(store.directory)}{missing}", file=sys.stderr)
    if args.json:
        print(json.dumps([describe(entry) for entry in entries], indent=2))
        return 0
    for entry in entries:
        item = describe(entry)
        print(f"{item['id']}  {item['arrived']}  <{item['sender']}>  attempts={item['attempts']}  "
              f"next={item['next_attempt']}")
        for recipient in item["recipients"]:
            print(f"    {recipient}")
        if item["last_error"]:
            print(f"    last error: {item['last_error']}")
    return 0


def describe(entry: QueuedMessage) -> dict:
    """The SPEC's `queue list --json` object for one entry."""
    return {
        "id": entry.id,
        "sender": entry.sender,
        "recipients": [r.address for r in entry.pending()],
        "attempts": entry.attempts,
        "arrived": _iso(entry.arrived),
        "next_attempt": _iso(entry.next_attempt),
        "last_error": entry.last_error,
    }


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
    if "/" in queue_id or "." in queue_id or store.load(queue_id) is None:
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

