"""Crash-safe file primitives: write and fsync, fsync a directory, replace atomically."""

from __future__ import annotations

import os
from typing import Iterable


def write_durably(path: str, chunks: Iterable[bytes], mode: int = 0o600) -> None:
    """Create `path` (it must not exist), write `chunks`, fsync before closing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with open(fd, "wb", buffering=0) as handle:
        for chunk in chunks:
            handle.write(chunk)
        os.fsync(fd)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove a file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
