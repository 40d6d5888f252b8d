"""File writes that survive a crash or a power cut once they return: data and the
directory entry naming it are both synced."""

from __future__ import annotations

import os
from pathlib import Path


def replace(temporary: Path, destination: Path) -> None:
    """Sync a finished temporary file and rename it over ``destination``."""
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, destination)
    sync_directory(destination.parent)


def append(path: Path, data: bytes) -> tuple[int, int]:
    """Append and sync; returns the byte range written. A new file's entry is synced too."""
    created = not path.exists()
    with open(path, "ab") as handle:
        offset = handle.seek(0, os.SEEK_END)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        end = handle.tell()
    if created:
        sync_directory(path.parent)
    return offset, end


def truncate(path: Path, size: int) -> None:
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        handle.truncate(size)
        os.fsync(handle.fileno())


def sync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
