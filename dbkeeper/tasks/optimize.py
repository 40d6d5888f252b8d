"""``optimize``: refresh the planner's statistics, optionally rebuild indexes."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from dbkeeper.context import Outcome, RunContext
from dbkeeper.dialects import postgres as pg
from dbkeeper.dialects import sqlite as sqlite_sql
from dbkeeper.jobspec import JobSpec


class OptimizeJob(JobSpec):
    task: Literal["optimize"]
    database: str
    mode: Literal["optimize", "analyze"] = "optimize"
    reindex: bool = False
    # PostgreSQL: only indexes whose estimated bloat reaches this are rebuilt.
    reindex_bloat_percent: float = Field(30.0, ge=0, le=100)

    def check(self, ctx: RunContext) -> None:
        ctx.target().tables()

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        target = ctx.target()
        if target.backend == "postgresql":
            with pg.connect(target, ctx.application_name) as conn:
                indexes = self._bloated(conn)
            return {
                "statements": ["ANALYZE"]
                + [f"REINDEX INDEX CONCURRENTLY {index['index']}" for index in indexes],
                "indexes": indexes,
            }
        statements = ["PRAGMA optimize" if self.mode == "optimize" else "ANALYZE"]
        if self.reindex:
            statements.append("REINDEX")
        return {"statements": statements, "tables": target.tables()}

    def _bloated(self, conn: Any) -> list[dict[str, Any]]:
        if not self.reindex:
            return []
        return [
            index
            for index in pg.index_bloat(conn)
            if index["bloat_percent"] >= self.reindex_bloat_percent
        ]

    def run(self, ctx: RunContext) -> Outcome:
        started = time.monotonic()
        target = ctx.target()
        result: dict[str, Any] = {}
        if target.backend == "postgresql":
            with pg.connect(target, ctx.application_name, ctx.token) as conn:
                pg.analyze(conn)
                statements = ["ANALYZE"]
                indexes = self._bloated(conn)
                for index in indexes:
                    ctx.check_cancelled()
                    pg.reindex_concurrently(target, conn, index["index"])
                    statements.append(f"REINDEX INDEX CONCURRENTLY {index['index']}")
                result["reindexed"] = indexes
        else:
            with sqlite_sql.connect(target) as conn:
                raw = sqlite_sql.driver(conn)
                with ctx.token.interrupting(raw.interrupt):
                    statements = sqlite_sql.optimize(conn, self.mode, self.reindex)
        ctx.check_cancelled()
        result.update(statements=statements, seconds=round(time.monotonic() - started, 3))
        return Outcome(None, result, ", ".join(statements))
