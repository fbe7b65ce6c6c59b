"""`mailgate queue flush|delete|hold|release`: the commands that change the outbound queue.

When a server runs on the spool (it holds the queue lock), each is a
request it carries out within a second (mailgate.outbound.control), so
nothing races its own writes; the command waits for it. Otherwise the
command acts on the spool directly, holding the lock meanwhile.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mailgate.config import load_config
from mailgate.outbound.spool import DamagedEntry, QueueStore
from mailgate.store.durable import inherited_owner

REQUEST_DEADLINE_SECONDS = 15.0


class CommandError(Exception):
    """An expected failure; main() prints it as one line and exits 1."""


def add_control_commands(actions: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    actions.add_parser("flush", help="try every queued message now", parents=[common]).set_defaults(handler=_flush)
    delete = actions.add_parser("delete", help="remove a queued message, or all of them (no bounce)",
                                parents=[common])
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("queue_id", metavar="ID", nargs="?")
    which.add_argument("--all", action="store_true", help="every message queued or set aside")
    delete.set_defaults(handler=_delete)
    for name, handler, text in (("hold", _hold, "stop delivering a message until it is released"),
                                ("release", _release, "deliver a held message again, now")):
        action = actions.add_parser(name, help=text, parents=[common])
        action.add_argument("queue_id", metavar="ID")
        action.set_defaults(handler=handler)


def store_of(args: argparse.Namespace) -> QueueStore:
    config = load_config(args.config)
    return QueueStore(os.path.join(config.server.state_dir, "queue"))


def valid_id(store: QueueStore, queue_id: str) -> str:
    """`queue_id`, if the queue (or corrupt/) has it; CommandError otherwise."""
    if "/" in queue_id or "." in queue_id or not queue_id or not store.exists(queue_id):
        raise CommandError(f"no queued message {queue_id}")
    return queue_id


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


@contextmanager
def _alone(store: QueueStore) -> Iterator[bool]:
    """True (with the queue lock held) when no server runs on the spool; False when one does."""
    if not store.lock():
        yield False
        return
    try:
        yield True
    finally:
        store.unlock()


def _flush(args: argparse.Namespace) -> int:
    store = store_of(args)
    with _as_owner_of(store.directory), _alone(store) as alone:
        if alone:
            count = _mark_all_due(store)
            print(f"mailgate is not running: {count} queued message(s) will be tried when it starts")
            return 0
        _ask_server(store, "flush")
    print("queue flush: the running server is trying every queued message")
    return 0


def _mark_all_due(store: QueueStore) -> int:
    """Every entry due now, except the held ones."""
    now, count = time.time(), 0
    for entry in store.entries():
        if entry.held:
            continue
        entry.next_attempt, count = now, count + 1
        store.save(entry)
    return count


def _delete(args: argparse.Namespace) -> int:
    store = store_of(args)
    with _as_owner_of(store.directory):
        if args.all:
            return _delete_all(store)
        return _delete_from(store, args.queue_id)


def _delete_from(store: QueueStore, queue_id: str) -> int:
    valid_id(store, queue_id)
    with _alone(store) as alone:
        if alone:
            store.remove(queue_id)
        else:
            _ask_server(store, "delete", queue_id)
    print(f"deleted {queue_id}")
    return 0


def _delete_all(store: QueueStore) -> int:
    """Everything queued or set aside now; mail that arrives while it runs stays."""
    ids = [*store.ids(), *store.corrupt.ids()]
    with _alone(store) as alone:
        if alone:
            for queue_id in ids:
                store.remove(queue_id)
        else:
            _ask_server(store, "delete-all")
    print(f"deleted {len(ids)} message(s)")
    return 0


def _hold(args: argparse.Namespace) -> int:
    return _mark(args, True)


def _release(args: argparse.Namespace) -> int:
    return _mark(args, False)


def _mark(args: argparse.Namespace, held: bool) -> int:
    store = store_of(args)
    with _as_owner_of(store.directory):
        queue_id = valid_id(store, args.queue_id)
        try:
            entry = store.load(queue_id)
        except DamagedEntry as damage:
            raise CommandError(f"{queue_id} is damaged ({damage}): it is never tried; delete it") from None
        if entry is None:
            raise CommandError(f"{queue_id} is set aside in corrupt/: it is never tried; delete it")
        with _alone(store) as alone:
            if not alone:
                _ask_server(store, "hold" if held else "release", queue_id)
            elif held != entry.held:
                entry.hold(time.time()) if held else entry.release(time.time())
                store.save(entry)
    print(f"held {queue_id}" if held else f"released {queue_id}")
    return 0


def _ask_server(store: QueueStore, action: str, queue_id: str = "") -> None:
    """File a request and wait until the running server has carried it out."""
    path = store.request(action, queue_id)
    deadline = time.monotonic() + REQUEST_DEADLINE_SECONDS
    while os.path.exists(path):
        if time.monotonic() > deadline:
            raise CommandError(f"the running server did not carry out '{action}' in time; it stays requested")
        time.sleep(0.05)
