"""`mailgate queue show|hold|release|delete --all` and `list --to/--older-than`, on a spool no server runs on."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mailgate.outbound.spool import QueuedMessage, QueueStore, RecipientState
from mailgate.store.maildir_writer import StoredMessage
from tests.cli.test_main import GOOD_CONFIG
from tests.cli.test_queue import BODY, run


def queue(tmp_path: Path) -> QueueStore:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mailgate.toml").write_text(GOOD_CONFIG)
    store = QueueStore(str(tmp_path / "var" / "queue"))
    store.prepare()
    now = time.time()
    for queue_id, arrived, recipients in (("OLD", now - 7200, ["b@remote.test", "c@other.test"]),
                                          ("NEW", now - 60, ["d@other.test"])):
        entry = QueuedMessage(id=queue_id, sender="a@example.test", arrived=arrived, attempts=2,
                              last_error="451 4.2.1 mailbox busy",
                              recipients=[RecipientState(address, "mx") for address in recipients],
                              session={"peer": "192.0.2.7", "helo": "pc", "user": None, "listener": "mx"})
        entry.recipients[0].code, entry.recipients[0].enhanced = 451, "4.2.1"
        entry.recipients[0].diagnostic = "mailbox busy"
        store.add(entry, StoredMessage.build(b"Received: by mx;\n", [BODY], len(BODY), BODY.count(b"\n")))
    return store


def ids(tmp_path: Path, *filters: str) -> list[str]:
    listed = run(tmp_path, "list", "--json", *filters)
    assert listed.returncode == 0, listed.stderr
    return [item["id"] for item in json.loads(listed.stdout)]


def test_show_prints_the_envelope_the_recipients_and_the_message(tmp_path: Path) -> None:
    queue(tmp_path)
    shown = run(tmp_path, "show", "OLD")
    assert shown.returncode == 0, shown.stderr
    envelope, message = shown.stdout.split("*** MESSAGE OLD ***\n")
    assert envelope.startswith("*** ENVELOPE OLD ***\nsender: <a@example.test>\n")
    assert "held: no\n" in envelope and "last error: 451 4.2.1 mailbox busy\n" in envelope
    assert "recipient: <b@remote.test> route=mx status=pending (451 4.2.1 mailbox busy)\n" in envelope
    assert "recipient: <c@other.test> route=mx status=pending\n" in envelope
    assert "client: [192.0.2.7] helo=<pc>" in envelope
    assert message == "Received: by mx;\n" + BODY.decode()
    missing = run(tmp_path, "show", "NOPE")
    assert (missing.returncode, missing.stderr) == (1, "mailgate: no queued message NOPE\n")


def test_list_filters_by_recipient_domain_and_age(tmp_path: Path) -> None:
    queue(tmp_path)
    assert ids(tmp_path) == ["OLD", "NEW"]
    assert ids(tmp_path, "--to", "remote.test") == ["OLD"]
    assert ids(tmp_path, "--to", "other.test") == ["OLD", "NEW"]
    assert ids(tmp_path, "--older-than", "1h") == ["OLD"]
    assert ids(tmp_path, "--older-than", "1h", "--to", "nowhere.test") == []
    bad = run(tmp_path, "list", "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_hold_and_release_without_a_server(tmp_path: Path) -> None:
    store = queue(tmp_path)
    held = run(tmp_path, "hold", "OLD")
    assert (held.returncode, held.stdout) == (0, "held OLD\n"), held.stderr
    [old] = [item for item in json.loads(run(tmp_path, "list", "--json").stdout) if item["id"] == "OLD"]
    assert old["held"] is True
    assert "OLD" in run(tmp_path, "list").stdout.split("held")[0]  # "attempts=2  held" instead of next=
    flushed = run(tmp_path, "flush")
    assert "1 queued message(s) will be tried" in flushed.stdout  # NEW only: OLD is held
    released = run(tmp_path, "release", "OLD")
    assert (released.returncode, released.stdout) == (0, "released OLD\n")
    entry = store.load("OLD")
    assert not entry.held and entry.held_seconds >= 0 and entry.next_attempt <= time.time()


def test_delete_all_empties_the_queue(tmp_path: Path) -> None:
    store = queue(tmp_path)
    store.set_aside("NEW", "message file missing")
    deleted = run(tmp_path, "delete", "--all")
    assert (deleted.returncode, deleted.stdout) == (0, "deleted 2 message(s)\n"), deleted.stderr
    assert store.ids() == [] and store.corrupt.ids() == []
    neither = run(tmp_path, "delete")
    assert neither.returncode == 2
