"""``backup``: a consistent copy of a database while the application keeps writing,
verified before it counts, with the oldest copies rotated out (``keep``).

SQLite uses the online backup API inside a read transaction, so the copy is the
database at one moment, and the row counts taken in that same transaction are what
the copy must hold. PostgreSQL uses ``pg_dump -Fc`` (one snapshot by design), checked
with ``pg_restore --list``. A copy is written under a temporary name, synced, checked,
then renamed: a file with the final name is always a complete, verified backup.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from sqlalchemy.engine import make_url

from dbkeeper import durable, templates
from dbkeeper.context import Outcome, RunContext
from dbkeeper.errors import Cancelled, DbkeeperError, TargetError
from dbkeeper.jobspec import ConfigPath, JobSpec
from dbkeeper.targets import Target
from dbkeeper.units import format_size

PLACEHOLDERS = ("database", "date", "timestamp")


def _check_path(template: str) -> str:
    templates.check(template, PLACEHOLDERS)
    if "{timestamp}" not in template and "{date}" not in template:
        raise ValueError("the path needs {timestamp} or {date}, or every backup replaces the last")
    return template


class BackupJob(JobSpec):
    task: Literal["backup"]
    database: str
    path: Annotated[ConfigPath, AfterValidator(_check_path)]
    keep: int = Field(7, ge=1)

    def check(self, ctx: RunContext) -> None:
        target = ctx.target()
        if target.backend == "postgresql":
            _tool("pg_dump")
            _tool("pg_restore")
        else:
            target.tables()

    def destination(self, ctx: RunContext) -> Path:
        moment = ctx.now.astimezone(UTC)
        values = {
            "database": ctx.target().name,
            "date": moment.date().isoformat(),
            "timestamp": moment.strftime("%Y%m%dT%H%M%SZ"),
        }
        return Path(templates.fill(self.path, values))

    def previous(self, ctx: RunContext) -> list[Path]:
        """Earlier backups of this job, oldest first."""
        glob = templates.pattern(self.path, {"database": ctx.target().name})
        found = [path for path in templates.matching(glob) if path.is_file()]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        self.check(ctx)
        previous = self.previous(ctx)
        drop = max(0, len(previous) + 1 - self.keep)
        return {
            "destination": str(self.destination(ctx)),
            "existing": len(previous),
            "would_remove": [str(p) for p in previous[:drop]],
        }

    def run(self, ctx: RunContext) -> Outcome:
        self.check(ctx)
        target = ctx.target()
        destination = self.destination(ctx)
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(destination.name + ".tmp")
        began = time.monotonic()
        try:
            if target.backend == "postgresql":
                result = _pg_dump(ctx, target, temporary)
            else:
                result = _sqlite_backup(ctx, target, temporary)
            durable.replace(temporary, destination)
        finally:
            temporary.unlink(missing_ok=True)
        removed = []
        for old in self.previous(ctx)[: -self.keep]:
            old.unlink(missing_ok=True)
            removed.append(str(old))
        size = destination.stat().st_size
        result.update(
            file=str(destination),
            bytes=size,
            seconds=round(time.monotonic() - began, 3),
            removed=removed,
        )
        return Outcome(None, result, f"{destination.name}, {format_size(size)}, verified")


def _sqlite_backup(ctx: RunContext, target: Target, temporary: Path) -> dict[str, Any]:
    source = sqlite3.connect(target.sqlite_path, isolation_level=None)
    try:
        source.execute("PRAGMA busy_timeout = 30000")
        with ctx.token.interrupting(source.interrupt):
            source.execute("BEGIN")  # one snapshot for the counts and the copy
            counts = _counts(source)
            copy = sqlite3.connect(temporary)
            try:
                source.backup(copy)
            except sqlite3.OperationalError as exc:
                ctx.check_cancelled()
                raise DbkeeperError(f"backup of {target.name!r} failed: {exc}") from None
            finally:
                copy.close()
            source.execute("COMMIT")
    finally:
        source.close()
    check = sqlite3.connect(f"file:{temporary}?mode=ro", uri=True)
    try:
        verdict = [row[0] for row in check.execute("PRAGMA quick_check")]
        copied = _counts(check)
    finally:
        check.close()
    if verdict != ["ok"]:
        raise DbkeeperError(f"the backup failed quick_check: {'; '.join(verdict[:5])}")
    if copied != counts:
        differ = sorted(t for t in counts if counts[t] != copied.get(t))
        raise DbkeeperError(f"the backup's row counts differ from the source in {differ}")
    return {"method": "sqlite online backup", "quick_check": "ok", "tables": counts}


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    quoted = {name: '"' + name.replace('"', '""') + '"' for name in names}
    return {
        name: int(conn.execute(f"SELECT count(*) FROM {quoted[name]}").fetchone()[0])
        for name in names
    }


def _pg_dump(ctx: RunContext, target: Target, temporary: Path) -> dict[str, Any]:
    password = make_url(target.url).password
    env = {**os.environ}
    if password:
        env["PGPASSWORD"] = str(password)  # not on the command line, where ps shows it
    dsn = target.libpq_url(password=False)
    _run(ctx, [_tool("pg_dump"), "-Fc", "-f", str(temporary), "--dbname", dsn], env)
    listing = _run(ctx, [_tool("pg_restore"), "--list", str(temporary)], env)
    tables = [line for line in listing.splitlines() if " TABLE DATA " in line]
    return {"method": "pg_dump -Fc", "pg_restore_list": "ok", "tables": len(tables)}


def _run(ctx: RunContext, argv: list[str], env: dict[str, str]) -> str:
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with ctx.token.interrupting(process.terminate):
        out, err = process.communicate()
    if ctx.token.cancelled:
        raise Cancelled(ctx.token.reason)
    if process.returncode != 0:
        name = Path(argv[0]).name
        raise DbkeeperError(f"{name} failed ({process.returncode}): {err.strip()[-500:]}")
    return out


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise TargetError(f"{name} is not on PATH; install the PostgreSQL client tools")
    return found
