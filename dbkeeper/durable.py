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


class WriteBehind:
    """Has the kernel start writing a growing file to disk as it grows, so that the sync
    before the file is renamed into place waits for its last megabytes, not all of it
    (PostgreSQL does the same for its writes). Without ``posix_fadvise`` (macOS,
    Windows), nothing."""

    STEP = 16 << 20

    def __init__(self, path: Path) -> None:
        self._descriptor = os.open(path, os.O_RDONLY) if hasattr(os, "posix_fadvise") else -1
        self._started = 0

    def __call__(self) -> None:
        if self._descriptor < 0:
            return
        size = os.fstat(self._descriptor).st_size
        if size - self._started >= self.STEP:
            os.posix_fadvise(
                self._descriptor, self._started, size - self._started, os.POSIX_FADV_DONTNEED
            )
            self._started = size

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
