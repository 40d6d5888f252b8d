"""``purge``: delete rows older than a cutoff, in short batches, previewable and guarded."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import Future
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from dbkeeper.archive import Archive, check_template
from dbkeeper.context import Outcome, RunContext
from dbkeeper.dialects import sqlite as sqlite_sql
from dbkeeper.errors import Cancelled, RefusedError
from dbkeeper.jobspec import ConfigPath, Duration, Identifier, JobSpec
from dbkeeper.pacing import Pacer
from dbkeeper.schedule import load_timezone
from dbkeeper.tasks import purge_postgres
from dbkeeper.timeformats import TimeFormat, detect, truncate_to_millisecond

FilterValue = str | int | float | bool | None
ArchiveTemplate = Annotated[ConfigPath, AfterValidator(check_template)]


class PurgeJob(JobSpec):
    task: Literal["purge"]
    database: str
    table: Identifier
    column: Identifier
    older_than: Duration
    where: dict[str, FilterValue] = Field(default_factory=dict)
    column_format: Literal["auto", "iso", "unix_s", "unix_ms"] = "auto"
    column_timezone: str = "UTC"
    allow_all: bool = False
    sample_rows: int = Field(5, ge=0, le=100)
    lock_timeout: Duration = timedelta(seconds=2)
    statement_timeout: Duration = timedelta(minutes=1)
    archive: ArchiveTemplate | None = None
    warn_before: Duration | None = None
    owner_column: Identifier | None = None

    @field_validator("column_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        load_timezone(value)
        return value

    @property
    def destructive(self) -> bool:
        return True

    @property
    def tables_written(self) -> tuple[str, ...]:
        return (self.table,)

    def archive_for(self, ctx: RunContext, key: str) -> Archive:
        """Where this run archives rows before deleting them."""
        assert self.archive is not None
        return Archive(
            self.archive,
            job=self.name,
            database=ctx.target().name,
            table=self.table,
            key=key,
            run_id=ctx.run_id,
            now=ctx.now,
        )

    def cutoff(self, now: datetime) -> datetime:
        return truncate_to_millisecond(now - self.older_than)

    def check(self, ctx: RunContext) -> None:
        owner = [self.owner_column] if self.owner_column else []
        ctx.target().require_columns(self.table, [self.column, *self.where, *owner])

    def refusal(self, rows: int, table_rows: int) -> str | None:
        """Why a purge of ``rows`` out of ``table_rows`` must not run, if it must not."""
        if self.allow_all or rows == 0 or rows < table_rows:
            return None
        return (
            f"job {self.name!r} would delete all {rows} rows of {self.table!r}; "
            "check older_than and its unit, or set allow_all = true"
        )

    def _query(self, ctx: RunContext, conn: Any) -> sqlite_sql.PurgeQuery:
        target = ctx.target()
        self.check(ctx)
        where = f"column {self.column!r} of table {self.table!r}"
        if self.column_format == "auto":
            time_format = detect(
                sqlite_sql.sample_column(target, conn, self.table, self.column), where
            )
        else:
            time_format = TimeFormat(self.column_format)
        key = sqlite_sql.walk_key(target, conn, self.table)
        return sqlite_sql.PurgeQuery(
            target, self.table, self.column, time_format, self.cutoff(ctx.now), self.where, key
        )

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        if ctx.target().backend == "postgresql":
            return purge_postgres.preview(self, ctx)
        with sqlite_sql.connect(ctx.target()) as conn:
            query = self._query(ctx, conn)
            rows = query.count(conn)
            table_rows = query.table_rows(conn)
            oldest, newest = query.edges(conn)
            samples = query.samples(conn, self.sample_rows)
            owners = (
                query.owners(conn, ctx.target().quote(self.owner_column), purge_postgres.MAX_OWNERS)
                if self.owner_column
                else None
            )
        return {
            "rows": rows,
            "table_rows": table_rows,
            "cutoff": self.cutoff(ctx.now),
            "oldest": oldest,
            "newest": newest,
            "format": query.time_format.value,
            "samples": samples,
            "would_refuse": self.refusal(rows, table_rows),
            "archive": self.archive,
            "owners": owners,
        }

    def run(self, ctx: RunContext) -> Outcome:
        target = ctx.target()
        cutoff = self.cutoff(ctx.now)
        summary = f"older than {cutoff:%Y-%m-%d %H:%M:%S} UTC"
        if target.backend == "postgresql":
            deleted, pg_result = purge_postgres.run(self, ctx)
            return Outcome(deleted, pg_result, f"deleted {deleted} rows {summary}")
        with sqlite_sql.connect(target) as conn:
            version = sqlite_sql.data_version(conn)
            query = self._query(ctx, conn)
            archive = self.archive_for(ctx, query.key) if self.archive else None
            recovered = archive.recover(partial(query.keys_present, conn)) if archive else None
            plan = query.plan(conn)
            oldest = query.edge(conn, "ASC")
            result: dict[str, Any] = {
                "cutoff": cutoff.isoformat(),
                "format": query.time_format.value,
                "planned": 0,
                "oldest": oldest.isoformat() if oldest else None,
            }
            if archive is not None:
                result["archive_recovery"] = recovered
            if not plan.walks:
                return Outcome(0, {**result, "batches": 0}, "nothing older than the cutoff")
            with sqlite_sql.counted_alongside(target, conn, query, plan) as planned:
                if not query.any_kept(conn):
                    refusal = self.refusal(planned.result(), query.table_rows(conn))
                    if refusal:
                        raise RefusedError(refusal)
                deleted = self._delete(ctx, conn, query, plan, planned, version, result, archive)
                result["planned"] = planned.result()
            sqlite_sql.checkpoint(conn)
        if archive is not None:
            result.update(archived=archive.written, archive_files=sorted(archive.files))
            summary += f", archived to {', '.join(sorted(Path(f).name for f in archive.files))}"
        return Outcome(deleted, result, f"deleted {deleted} rows {summary}")

    def _delete(
        self,
        ctx: RunContext,
        conn: Any,
        query: sqlite_sql.PurgeQuery,
        plan: sqlite_sql.Plan,
        planned: Future[int],
        version: int,
        result: dict[str, Any],
        archive: Archive | None,
    ) -> int:
        pacer = Pacer()
        deleted = batches = 0
        longest = 0.0
        started = time.monotonic()
        raw = sqlite_sql.driver(conn)
        with ctx.token.interrupting(raw.interrupt):
            for walk in plan.walks:
                walked = deleted
                while True:
                    ctx.check_cancelled()
                    current = sqlite_sql.data_version(conn)
                    if current != version:
                        pacer.others_wrote()
                        version = current
                    window = walk.next(conn, pacer.width, deleted - walked)
                    if window is None:
                        break
                    began = time.monotonic()
                    try:
                        deleted += query.delete_window(conn, window, archive)
                    except sqlite3.OperationalError:
                        ctx.check_cancelled()
                        raise
                    elapsed = time.monotonic() - began
                    longest = max(longest, elapsed)
                    batches += 1
                    result.update(deleted=deleted, batches=batches)
                    total = planned.result() if planned.done() else 0
                    ctx.progress(100 * deleted / total if total else 0, deleted)
                    _pause(ctx, conn, pacer.record(elapsed), version)
        result.update(
            deleted=deleted,
            batches=batches,
            longest_batch_ms=round(longest * 1000, 1),
            seconds=round(time.monotonic() - started, 3),
        )
        return deleted


def _pause(ctx: RunContext, conn: Any, seconds: float, version: int) -> None:
    """Leave the write lock free for up to ``seconds``, and no longer once another
    connection has committed: the writer that waited for the lock has had its turn."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if ctx.token.wait(min(left, 0.001)):
            raise Cancelled(ctx.token.reason)
        if sqlite_sql.data_version(conn) != version:
            return
