"""Tests for mailgate.store.durable.replace_file: whole-file replacement, mode first, fsyncs, no leftovers."""

from __future__ import annotations

import os
import stat
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
