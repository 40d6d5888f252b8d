"""``vacuum``: give deleted space back (SQLite) or reclaim dead tuples (PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field

from dbkeeper.context import Outcome, RunContext
from dbkeeper.dialects import postgres as pg
from dbkeeper.dialects import sqlite as sqlite_sql
from dbkeeper.errors import TargetError
from dbkeeper.jobspec import Identifier, JobSpec
from dbkeeper.units import format_size

# Session thresholds do not matter to a vacuum preview.
_NEVER = timedelta(days=36500)
FULL_WARNING = (
    "VACUUM FULL rewrites each table under an ACCESS EXCLUSIVE lock: "
    "nobody can read or write a table while it is rewritten"
)


class VacuumJob(JobSpec):
    task: Literal["vacuum"]
    database: str
    tables: list[Identifier] = Field(default_factory=list)
    full: bool = False

    def check(self, ctx: RunContext) -> None:
        target = ctx.target()
        if target.backend == "sqlite":
            if self.tables or self.full:
                raise TargetError(
                    f"job {self.name!r}: SQLite vacuums the whole file; "
                    "'tables' and 'full' apply to PostgreSQL databases"
                )
            target.tables()
            return
        for table in self.tables:
            target.columns(table)

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        self.check(ctx)
        target = ctx.target()
        if target.backend == "postgresql":
            with pg.connect(target, ctx.application_name) as conn:
                size = pg.tables_size(target, conn, self.tables)
                report = pg.health(conn, long_running=_NEVER, idle=_NEVER)
            wanted = set(self.tables)
            return {
                "size": size,
                "mode": "full" if self.full else "standard",
                "tables": [
                    {key: t[key] for key in ("table", "bytes", "dead_rows", "last_vacuum")}
                    for t in report["tables"]
                    if not wanted or t["table"] in wanted
                ],
                "warning": FULL_WARNING if self.full else None,
            }
        with sqlite_sql.connect(target) as conn:
            pages = sqlite_sql.page_stats(conn)
        return {
            "size": sqlite_sql.file_size(target.sqlite_path),
            "reclaimable_bytes": pages["freelist_count"] * pages["page_size"],
            **pages,
        }

    def run(self, ctx: RunContext) -> Outcome:
        self.check(ctx)
        target = ctx.target()
        if target.backend == "postgresql":
            with pg.connect(target, ctx.application_name, ctx.token) as conn:
                result = pg.vacuum(target, conn, self.tables, self.full)
            if self.full:
                result["warning"] = FULL_WARNING
        else:
            with sqlite_sql.connect(target) as conn:
                raw = sqlite_sql.driver(conn)
                with ctx.token.interrupting(raw.interrupt):
                    result = sqlite_sql.vacuum(target, conn)
        ctx.check_cancelled()
        summary = (
            f"{format_size(result['size_before'])} -> {format_size(result['size_after'])}, "
            f"saved {format_size(result['bytes_saved'])} ({result['percent_saved']}%)"
        )
        return Outcome(None, result, summary)
