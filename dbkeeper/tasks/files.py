"""``files``: delete files under a folder that match a pattern and are older than a cutoff
(temp folders, old logs, old exports), keeping the newest ``keep_last``.

Symbolic links are never followed: a link to a folder is not entered, and a matching
link is removed itself, never what it points to, so nothing outside ``path`` is touched.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from dbkeeper.context import Outcome, RunContext
from dbkeeper.errors import DbkeeperError, TargetError
from dbkeeper.jobspec import ConfigPath, Duration, JobSpec
from dbkeeper.units import format_size


@dataclass(frozen=True)
class Found:
    path: Path
    relative: str
    size: int
    modified: datetime


class FilesJob(JobSpec):
    task: Literal["files"]
    path: ConfigPath
    pattern: str = Field("*", min_length=1)
    older_than: Duration
    keep_last: int = Field(0, ge=0)
    recursive: bool = True
    remove_empty_folders: bool = False
    sample_files: int = Field(20, ge=0, le=1000)

    @property
    def destructive(self) -> bool:
        return True

    def check(self, ctx: RunContext) -> None:
        if not os.path.isdir(self.path):
            raise TargetError(f"path {self.path} is not a folder")

    def _matches(self, relative: str) -> bool:
        # A pattern without a slash matches names at any depth; with one, the whole path.
        name = relative if "/" in self.pattern else relative.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(name, self.pattern)

    def candidates(self, ctx: RunContext) -> tuple[list[Found], int]:
        """Files that would be deleted (oldest first), and how many matching files are kept."""
        self.check(ctx)
        root = Path(self.path)
        matching: list[Found] = []
        for folder, folders, names in os.walk(root, followlinks=False):
            if not self.recursive:
                folders.clear()
            for name in names + [f for f in folders if (Path(folder) / f).is_symlink()]:
                path = Path(folder) / name
                relative = path.relative_to(root).as_posix()
                if not self._matches(relative):
                    continue
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue  # removed meanwhile
                if stat.S_ISDIR(info.st_mode):
                    continue
                modified = datetime.fromtimestamp(info.st_mtime, UTC)
                matching.append(Found(path, relative, info.st_size, modified))
        matching.sort(key=lambda found: (found.modified, found.relative))
        cutoff = ctx.now - self.older_than
        newest_kept = max(0, len(matching) - self.keep_last)
        old = [f for f in matching[:newest_kept] if f.modified < cutoff]
        return old, len(matching) - len(old)

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        old, kept = self.candidates(ctx)
        return {
            "path": self.path,
            "files": len(old),
            "bytes": sum(found.size for found in old),
            "kept": kept,
            "cutoff": ctx.now - self.older_than,
            "samples": [
                {"file": f.relative, "size": f.size, "modified": f.modified}
                for f in old[: self.sample_files]
            ],
        }

    def run(self, ctx: RunContext) -> Outcome:
        old, kept = self.candidates(ctx)
        deleted = freed = 0
        failures: list[dict[str, str]] = []
        for index, found in enumerate(old):
            ctx.check_cancelled()
            try:
                found.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                failures.append({"file": found.relative, "error": exc.strerror or str(exc)})
                continue
            deleted += 1
            freed += found.size
            ctx.progress(100 * (index + 1) / len(old), deleted)
        folders = self._remove_empty_folders() if self.remove_empty_folders else 0
        result = {
            "deleted": deleted,
            "bytes_freed": freed,
            "kept": kept,
            "folders_removed": folders,
            "failed": len(failures),
            "failures": failures[:20],
        }
        if failures:
            raise DbkeeperError(
                f"{len(failures)} files could not be deleted, first {failures[0]['file']}: "
                f"{failures[0]['error']}",
                result,
            )
        return Outcome(deleted, result, f"deleted {deleted} files, {format_size(freed)}")

    def _remove_empty_folders(self) -> int:
        removed = 0
        for folder, _, _ in sorted(os.walk(self.path, followlinks=False), reverse=True):
            if folder != self.path and not os.listdir(folder):
                os.rmdir(folder)
                removed += 1
        return removed
