"""``backfill``: give rows whose ``column`` is NULL or empty a value computed by a Python
callable from the row (e.g. classify log entries whose ``job_type`` is empty).

Rows are read in key order, ``batch_size`` at a time; each batch's updates commit in
one transaction. A row whose callable raises is recorded as failed and left as it
was, without losing the batch's other updates. An update applies only if the column
is still empty, so a value the application wrote meanwhile is never overwritten.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from dbkeeper.connections import connect
from dbkeeper.context import Outcome, RunContext
from dbkeeper.dialects import postgres as pg
from dbkeeper.dialects import sqlite as sqlite_sql
from dbkeeper.errors import DbkeeperError, TargetError
from dbkeeper.jobspec import Identifier, JobSpec
from dbkeeper.targets import database_reason, transaction
from dbkeeper.tasks.python import CallPath, JobFunction, load_callable

FilterValue = str | int | float | bool | None
MAX_LISTED_FAILURES = 20


class BackfillJob(JobSpec):
    task: Literal["backfill"]
    database: str
    table: Identifier
    column: Identifier
    call: CallPath
    where: dict[str, FilterValue] = Field(default_factory=dict)
    batch_size: int = Field(500, ge=1, le=100_000)
    sample_rows: int = Field(5, ge=0, le=100)

    @property
    def tables_written(self) -> tuple[str, ...]:
        return (self.table,)

    def check(self, ctx: RunContext) -> None:
        ctx.target().require_columns(self.table, [self.column, *self.where])
        load_callable(self.call)

    def _sql(self, ctx: RunContext, conn: Connection) -> tuple[str, str, str, dict[str, Any]]:
        """The key column, the table, and the condition of rows to fill (with its params)."""
        self.check(ctx)
        target = ctx.target()
        if target.backend == "postgresql":
            key = pg.archive_key(target, conn, self.table)
            if len(key.columns) != 1:
                raise TargetError(f"table {self.table!r} needs a single-column primary key")
            key_column = target.quote(key.columns[0])
            column = target.quote(self.column)
            empty = f"NULLIF(CAST({column} AS text), '') IS NULL"
        else:
            walk = sqlite_sql.walk_key(target, conn, self.table)
            key_column = walk if walk == "rowid" else target.quote(walk)
            column = target.quote(self.column)
            empty = f"({column} IS NULL OR {column} = '')"
        params: dict[str, Any] = {}
        for index, (name, value) in enumerate(self.where.items()):
            if value is None:
                empty += f" AND {target.quote(name)} IS NULL"
            else:
                empty += f" AND {target.quote(name)} = :filter_{index}"
                params[f"filter_{index}"] = value
        return key_column, target.quote(self.table), empty, params

    def _batch(
        self, conn: Connection, sql: tuple[str, str, str, dict[str, Any]], after: Any, size: int
    ) -> list[dict[str, Any]]:
        key, table, condition, params = sql
        later = "" if after is None else f" AND {key} > :after"
        result = conn.execute(
            text(
                f"SELECT {key} AS dbkeeper_key, * FROM {table} WHERE {condition}{later} "
                f"ORDER BY {key} LIMIT :size"
            ),
            {**params, "after": after, "size": size},
        )
        return [dict(row._mapping) for row in result]

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        function = load_callable(self.call)
        with connect(ctx) as conn:
            sql = self._sql(ctx, conn)
            total = self._count(conn, sql)
            rows = self._batch(conn, sql, None, self.sample_rows)
        samples = []
        for row in rows:
            key = row.pop("dbkeeper_key")
            value, error = _call(function, row)
            samples.append({"key": key, "row": row, "value": value, "error": error})
        return {"rows": total, "column": self.column, "call": self.call, "samples": samples}

    @staticmethod
    def _count(conn: Connection, sql: tuple[str, str, str, dict[str, Any]]) -> int:
        _, table, condition, params = sql
        query = text(f"SELECT count(*) FROM {table} WHERE {condition}")
        return int(conn.execute(query, params).scalar_one())

    def run(self, ctx: RunContext) -> Outcome:
        function = load_callable(self.call)
        updated = skipped = 0
        failures: list[dict[str, Any]] = []
        failed = 0
        with connect(ctx) as conn:
            sql = self._sql(ctx, conn)
            key, table, condition, params = sql
            update = text(
                f"UPDATE {table} SET {ctx.target().quote(self.column)} = :value "
                f"WHERE {key} = :key AND {condition}"
            )
            total = self._count(conn, sql)
            after = None
            while rows := self._batch(conn, sql, after, self.batch_size):
                ctx.check_cancelled()
                after = rows[-1]["dbkeeper_key"]
                values = []
                for row in rows:
                    row_key = row.pop("dbkeeper_key")
                    value, error = _call(function, row)
                    if error is not None:
                        failed += 1
                        if len(failures) < MAX_LISTED_FAILURES:
                            failures.append({"key": row_key, "error": error})
                    elif value is None:
                        skipped += 1  # the callable has no value for it yet
                    else:
                        values.append({**params, "key": row_key, "value": value})
                if values:
                    try:
                        with transaction(conn):
                            done = conn.execute(update, values)
                    except DBAPIError as exc:
                        ctx.check_cancelled()
                        raise DbkeeperError(
                            f"updating {self.column!r} failed after {updated} rows: "
                            f"{database_reason(exc)}",
                            {"planned": total, "updated": updated, "failed": failed},
                        ) from None
                    updated += max(done.rowcount, 0)
                ctx.progress(100 * (updated + failed + skipped) / max(total, 1), updated)
        result = {
            "planned": total,
            "updated": updated,
            "skipped": skipped,
            "failed": failed,
            "failures": failures,
        }
        if failed:
            raise DbkeeperError(
                f"{failed} rows could not be given a value (first: key {failures[0]['key']}: "
                f"{failures[0]['error']}); {updated} rows were updated",
                result,
            )
        return Outcome(updated, result, f"filled {self.column} in {updated} rows")


def _call(function: JobFunction, row: dict[str, Any]) -> tuple[Any, str | None]:
    try:
        return function(dict(row)), None
    except Exception as exc:  # the callable's own failure is this row's failure
        return None, f"{type(exc).__name__}: {exc}"
