"""``sql``: statements with bound parameters, each in its own transaction; optionally
repeated until they change no more rows, for batched updates.

Besides the job's ``params``, every statement may use ``:now`` (the run's time, UTC)
and ``:last_success`` (when the job's last successful run started, or the Unix epoch),
for work like "recalculate what changed since last time"; with ``batch_size``,
``:batch_size`` too.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from dbkeeper.connections import connect
from dbkeeper.context import Outcome, RunContext
from dbkeeper.errors import DbkeeperError, TargetError
from dbkeeper.jobspec import JobSpec
from dbkeeper.models import RunStatus
from dbkeeper.targets import database_reason, transaction

ParamValue = str | int | float | bool | None
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# EXPLAIN checks these without running them; other statements are checked when they run.
_EXPLAINABLE = ("select", "insert", "update", "delete", "with", "values")


class SqlJob(JobSpec):
    task: Literal["sql"]
    database: str
    sql: list[str] = Field(min_length=1)
    params: dict[str, ParamValue] = Field(default_factory=dict)
    repeat_until_zero: bool = False
    batch_size: int | None = Field(None, ge=1)
    max_repeats: int = Field(100_000, ge=1)

    @field_validator("sql", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("sql")
    @classmethod
    def _not_blank(cls, value: list[str]) -> list[str]:
        if any(not statement.strip() for statement in value):
            raise ValueError("a statement is empty")
        return value

    def _params(self, ctx: RunContext, conn: Connection) -> dict[str, Any]:
        last = EPOCH
        if ctx.store is not None:
            done = ctx.store.runs(job=self.name, status=[RunStatus.SUCCEEDED], limit=1)
            if done and done[0].started_at:
                last = done[0].started_at
        moments: dict[str, Any] = {"now": ctx.now, "last_success": last}
        if conn.dialect.name == "sqlite":  # SQLite keeps times as ISO text
            moments = {k: v.isoformat(sep=" ", timespec="milliseconds") for k, v in moments.items()}
        extra = {"batch_size": self.batch_size} if self.batch_size else {}
        return {**moments, **extra, **self.params}

    def check(self, ctx: RunContext) -> None:
        with connect(ctx) as conn:
            self._explain(conn, self._params(ctx, conn))

    def _explain(self, conn: Connection, params: dict[str, Any]) -> list[list[str]]:
        plans: list[list[str]] = []
        for number, statement in enumerate(self.sql, 1):
            if not statement.lstrip().lower().startswith(_EXPLAINABLE):
                plans.append([])
                continue
            try:  # EXPLAIN without ANALYZE plans a statement without running it
                rows = conn.execute(text(f"EXPLAIN {statement}"), params).all()
            except DBAPIError as exc:
                raise TargetError(f"statement {number}: {database_reason(exc)}") from None
            plans.append([" ".join(str(v) for v in row) for row in rows])
        return plans

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        with connect(ctx) as conn:
            params = self._params(ctx, conn)
            plans = self._explain(conn, params)
        return {
            "statements": [
                {"sql": statement, "plan": plan}
                for statement, plan in zip(self.sql, plans, strict=True)
            ],
            "params": params,
            "repeat_until_zero": self.repeat_until_zero,
        }

    def run(self, ctx: RunContext) -> Outcome:
        done: list[dict[str, Any]] = []
        total = 0
        with connect(ctx) as conn:
            params = self._params(ctx, conn)
            for number, statement in enumerate(self.sql, 1):
                step: dict[str, Any] = {"statement": number, "rows": 0, "executions": 0}
                done.append(step)
                began = time.monotonic()
                while True:
                    ctx.check_cancelled()
                    try:
                        with transaction(conn):
                            result = conn.execute(text(statement), params)
                            returned = result.all() if result.returns_rows else None
                    except DBAPIError as exc:
                        ctx.check_cancelled()
                        raise DbkeeperError(
                            f"statement {number}: {database_reason(exc)}", {"statements": done}
                        ) from None
                    step["executions"] += 1
                    changed = max(result.rowcount, 0) if returned is None else 0
                    step["rows"] += changed
                    total += changed
                    if returned is not None:
                        step["returned"] = [list(row) for row in returned[:10]]
                    ctx.progress(100 * (number - 1) / len(self.sql), total)
                    if not self.repeat_until_zero or changed == 0:
                        break
                    if step["executions"] >= self.max_repeats:
                        raise DbkeeperError(
                            f"statement {number} still changed rows after {self.max_repeats} "
                            "executions; does it ever reach zero?",
                            {"statements": done},
                        )
                step["seconds"] = round(time.monotonic() - began, 3)
        return Outcome(total, {"statements": done}, f"{total} rows in {len(self.sql)} statements")
