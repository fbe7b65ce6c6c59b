"""Tests for mailgate.store.durable: whole-file replacement (mode and owner first, fsyncs, no leftovers),
directories, no short files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.store import durable


def test_replaces_the_file_whole_with_the_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)  # the mode is set, not filtered by the umask
    try:
        durable.replace_file(str(target), b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["secret"]


def test_mode_is_set_before_any_byte_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "key.pem"
    seen: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append((stat.S_IMODE(os.fstat(fd).st_mode), os.fstat(fd).st_size))
        real_fsync(fd)

    real_fchmod = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        assert os.fstat(fd).st_size == 0  # nothing written yet
        real_fchmod(fd, mode)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "fchmod", fchmod)
    durable.replace_file(str(target), b"PRIVATE", mode=0o600)
    assert seen == [(0o600, len(b"PRIVATE"))]  # the data is synced before the rename


def test_directory_is_synced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    monkeypatch.setattr(durable, "fsync_dir", synced.append)
    durable.replace_file(str(tmp_path / "users"), b"a:b\n")
    assert synced == [str(tmp_path)]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "users"
    target.write_bytes(b"old")

    def refuse(source: str, destination: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(durable.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        durable.replace_file(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["users"]


SHORT_WRITE_CHILD = """
import errno, resource, signal, sys
from mailgate.store.durable import write_durably
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_durably(sys.argv[1], [b"h" * 600, b"b" * 600])  # the kernel takes 400 of the second
except OSError as exc:
    sys.exit(0 if exc.errno == errno.EFBIG else 3)
sys.exit(2)
"""


def test_a_short_write_is_an_error_not_a_shorter_file(tmp_path: Path) -> None:
    """A file-size limit (or a disk filling up) makes write(2) take only what fits and
    say so; the writer goes on and gets EFBIG, instead of leaving 1000 of 1200 bytes."""
    done = subprocess.run([sys.executable, "-c", SHORT_WRITE_CHILD, str(tmp_path / "message")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr)


def test_exclusive_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    durable.replace_file(str(target), b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        durable.replace_file(str(target), b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["cert.pem"]  # no temporary file left


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_owner_is_set_on_the_new_file(tmp_path: Path) -> None:
    target = tmp_path / "users"
    durable.replace_file(str(target), b"a:b\n", mode=0o640, owner=(12345, 12346))
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (12345, 12346, 0o640)


def test_make_directories_makes_the_missing_ones_only(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir(mode=0o755)
    made = durable.make_directories(str(tmp_path / "var" / "queue" / "msg"), 0o700)
    assert made == [str(tmp_path / "var" / "queue"), str(tmp_path / "var" / "queue" / "msg")]
    assert stat.S_IMODE((tmp_path / "var" / "queue").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o755
    assert durable.make_directories(str(tmp_path / "var" / "queue")) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_make_directories_gives_the_new_ones_to_the_owner(tmp_path: Path) -> None:
    durable.make_directories(str(tmp_path / "var" / "tls"), owner=(12345, 12346))
    for path in (tmp_path / "var", tmp_path / "var" / "tls"):
        assert (path.stat().st_uid, path.stat().st_gid) == (12345, 12346)
    assert tmp_path.stat().st_uid == os.geteuid()
