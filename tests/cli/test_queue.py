"""`mailgate queue` with damaged entries: every one listed with its reason, none hiding the rest."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mailgate.outbound.spool import QueuedMessage, QueueStore, RecipientState
from mailgate.store.maildir_writer import StoredMessage
from tests.cli.test_main import GOOD_CONFIG, MAILGATE

BODY = b"Subject: s\n\nhello\n"


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAILGATE, "--config", "etc/mailgate.toml", "queue", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=60, check=False)


def spool(tmp_path: Path) -> QueueStore:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mailgate.toml").write_text(GOOD_CONFIG)
    store = QueueStore(str(tmp_path / "var" / "queue"))
    store.prepare()
    for queue_id, arrived in (("GOOD", 2000.0), ("SHORT", 1000.0), ("ASIDE", 500.0)):
        entry = QueuedMessage(id=queue_id, sender="a@x.test", arrived=arrived,
                              recipients=[RecipientState("b@y.test", "mx")])
        store.add(entry, StoredMessage.build(b"Received: by mx;\n", [BODY], len(BODY), BODY.count(b"\n")))
    Path(store.message_path("SHORT")).write_bytes(b"Received: by mx;\nSubj")
    store.set_aside("ASIDE", "message file does not match its SHA-256 checksum")
    env = tmp_path / "var" / "queue" / "env"
    (env / "EMPTY").write_bytes(b"")
    (env / "GARBAGE").write_bytes(bytes(range(128, 256)))
    return store


def test_queue_list_shows_every_entry_and_every_damaged_one(tmp_path: Path) -> None:
    spool(tmp_path)
    listed = run(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("GOOD  1970-01-01T00:33:20Z  <a@x.test>  attempts=0")
    corrupt = {line.split("  ")[0]: line.split("corrupt: ", 1)[1] for line in lines if "  corrupt: " in line}
    assert corrupt == {
        "EMPTY": "envelope file is empty",
        "GARBAGE": "envelope file is not JSON: 'utf-8' codec can't decode byte 0x80 in position 0: invalid "
                   "start byte",
        "SHORT": f"message file has 21 bytes, {len('Received: by mx;') + 1 + len(BODY)} were queued",
        "ASIDE": "message file does not match its SHA-256 checksum",
    }


def test_queue_list_json_marks_damaged_entries_corrupt_with_their_reason(tmp_path: Path) -> None:
    spool(tmp_path)
    listed = run(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    items = {item["id"]: item for item in json.loads(listed.stdout)}
    assert sorted(items) == ["ASIDE", "EMPTY", "GARBAGE", "GOOD", "SHORT"]
    assert (items["GOOD"]["corrupt"], items["GOOD"]["reason"], items["GOOD"]["recipients"]) == (False, None, ["b@y.test"])
    assert items["EMPTY"] == {"id": "EMPTY", "sender": None, "recipients": [], "attempts": None, "arrived": None,
                              "next_attempt": None, "last_error": None, "held": None, "corrupt": True,
                              "reason": "envelope file is empty"}
    for queue_id in ("SHORT", "ASIDE"):  # their envelopes can be read: all they say is shown
        assert (items[queue_id]["corrupt"], items[queue_id]["sender"]) == (True, "a@x.test")
        assert items[queue_id]["recipients"] == ["b@y.test"]


def test_queue_delete_removes_damaged_and_set_aside_entries(tmp_path: Path) -> None:
    spool(tmp_path)
    for queue_id in ("ASIDE", "GARBAGE", "SHORT"):
        deleted = run(tmp_path, "delete", queue_id)
        assert (deleted.returncode, deleted.stdout) == (0, f"deleted {queue_id}\n"), deleted.stderr
    assert sorted(os.listdir(tmp_path / "var" / "queue" / "env")) == ["EMPTY", "GOOD"]
    assert os.listdir(tmp_path / "var" / "queue" / "corrupt") == []
    assert os.listdir(tmp_path / "var" / "queue" / "msg") == ["GOOD"]
    again = run(tmp_path, "delete", "ASIDE")
    assert (again.returncode, again.stderr) == (1, "mailgate: no queued message ASIDE\n")


def test_queue_flush_without_a_server_skips_damaged_entries(tmp_path: Path) -> None:
    spool(tmp_path)
    flushed = run(tmp_path, "flush")
    assert flushed.returncode == 0, flushed.stderr
    assert "2 queued message(s) will be tried" in flushed.stdout  # GOOD and SHORT: its envelope is whole
