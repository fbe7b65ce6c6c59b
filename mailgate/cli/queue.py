"""`mailgate queue list|show`: the outbound queue from the command line, read from the spool.

Damaged entries (in corrupt/, or in env/ and not yet tried) are listed with
their reason, and one bad file never hides the rest of the queue. The
commands that change the queue are in mailgate.cli.queue_control.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from mailgate.cli.queue_control import CommandError, add_control_commands, store_of, valid_id
from mailgate.config.checks import parse_duration
from mailgate.outbound.spool import DamagedEntry, QueuedMessage, QueueStore

__all__ = ["CommandError", "add_queue_commands"]


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
    listing.add_argument("--to", metavar="DOMAIN", help="only messages with a recipient pending in DOMAIN")
    listing.add_argument("--older-than", metavar="AGE", type=_age, help='only messages queued longer than AGE '
                         '("30m", "1h", "2d")')
    listing.set_defaults(handler=_list)
    show = actions.add_parser("show", help="print a queued message: envelope, recipients, message",
                              parents=[common])
    show.add_argument("queue_id", metavar="ID")
    show.set_defaults(handler=_show)
    add_control_commands(actions, common)


def _age(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _list(args: argparse.Namespace) -> int:
    store = store_of(args)
    entries, damaged = survey(store)
    wanted = _filter(args.to, args.older_than)
    items = [describe(entry) for entry in sorted(entries, key=lambda e: e.arrived) if wanted(entry)]
    items += [describe_damaged(item) for item in damaged if item.entry is None and wanted is _everything
              or item.entry is not None and wanted(item.entry)]
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
            next_attempt = "held" if item["held"] else f"next={item['next_attempt']}"
            print(f"{item['id']}  {item['arrived']}  <{item['sender']}>  attempts={item['attempts']}  "
                  f"{next_attempt}")
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
        damaged.append(Damaged(queue_id, aside.reason, readable_envelope(aside.envelope, queue_id)))
    return entries, damaged


def readable_envelope(envelope: bytes | None, queue_id: str) -> QueuedMessage | None:
    """What can be read of a set-aside entry's envelope: None if nothing can."""
    try:
        return QueuedMessage.from_json(envelope or b"", queue_id)
    except DamagedEntry:
        return None


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
        "held": entry.held,
        "corrupt": False,
        "reason": None,
    }


def describe_damaged(item: Damaged) -> dict:
    """A damaged entry's object: what could be read of it (null where nothing could), and why."""
    if item.entry is not None:
        described = describe(item.entry)
    else:
        described = {"id": item.queue_id, "sender": None, "recipients": [], "attempts": None,
                     "arrived": None, "next_attempt": None, "last_error": None, "held": None}
    return {**described, "corrupt": True, "reason": item.reason}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _everything(entry: QueuedMessage) -> bool:
    return True


def _filter(domain: str | None, older_than: float | None) -> Callable[[QueuedMessage], bool]:
    """The --to and --older-than test; without either, everything (damaged entries too)."""
    if domain is None and older_than is None:
        return _everything
    suffix = "@" + domain.lower().lstrip("@") if domain else None
    cutoff = time.time() - older_than if older_than is not None else None

    def wanted(entry: QueuedMessage) -> bool:
        if cutoff is not None and entry.arrived > cutoff:
            return False
        return suffix is None or any(r.address.lower().endswith(suffix) for r in entry.pending())

    return wanted


def _show(args: argparse.Namespace) -> int:
    """Like Postfix's `postcat -q`: the envelope, each recipient's state, then the message as queued."""
    store = store_of(args)
    queue_id = valid_id(store, args.queue_id)
    out = sys.stdout
    try:
        entry = store.load(queue_id)
        reason = None
    except DamagedEntry as damage:
        entry, reason = None, str(damage)
    message_path = store.message_path(queue_id)
    if entry is None and reason is None:  # set aside in corrupt/
        aside = store.corrupt.read(queue_id)
        reason, message_path = aside.reason, os.path.join(store.corrupt.directory, queue_id + ".msg")
        entry = readable_envelope(aside.envelope, queue_id)
    print(f"*** ENVELOPE {queue_id} ***", file=out)
    if reason is not None:
        print(f"corrupt: {reason}", file=out)
    if entry is not None:
        for line in envelope_lines(entry):
            print(line, file=out)
    print(f"*** MESSAGE {queue_id} ***", file=out, flush=True)
    try:
        with open(message_path, "rb") as message:
            shutil.copyfileobj(message, sys.stdout.buffer)  # a large message is not read into memory whole
    except OSError as error:
        print(f"(no message file: {error.strerror})", file=out)
    sys.stdout.flush()
    return 0


def envelope_lines(entry: QueuedMessage) -> list[str]:
    held = f"yes, since {_iso(entry.held_since)}" if entry.held_since is not None else "no"
    lines = [
        f"sender: <{entry.sender}>",
        f"arrived: {_iso(entry.arrived)}",
        f"attempts: {entry.attempts}",
        f"next attempt: {_iso(entry.next_attempt)}",
        f"held: {held}",
        f"last error: {entry.last_error or '-'}",
        f"client: [{entry.session.get('peer', '')}] helo=<{entry.session.get('helo', '')}> "
        f"user=<{entry.session.get('user') or ''}> listener={entry.session.get('listener', '')}",
    ]
    for recipient in entry.recipients:
        reply = " ".join(str(part) for part in (recipient.code, recipient.enhanced, recipient.diagnostic) if part)
        lines.append(f"recipient: <{recipient.address}> route={recipient.route} status={recipient.status}"
                     + (f" ({reply})" if reply else ""))
    return lines

