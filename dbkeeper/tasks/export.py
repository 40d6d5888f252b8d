"""``export``: a table or a query to CSV (optionally gzip) or Parquet, streamed batch by
batch so memory stays flat whatever the size.

SQLite is read through Arrow's ADBC driver straight into pyarrow's writers; PostgreSQL
CSV comes from ``COPY ... TO STDOUT`` and Parquet through the ADBC PostgreSQL driver.
The file is accepted only if the rows written agree with the rows the database holds:
counted in the same snapshot (one read transaction) as they are exported, or for COPY
the rows PostgreSQL reports it sent. The new file is written under a
temporary name and renamed over the old one, which is kept as a timestamped version
(the newest ``keep`` versions stay).
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import select
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dbkeeper import batches, durable
from dbkeeper.connections import connect
from dbkeeper.context import Outcome, RunContext
from dbkeeper.errors import DbkeeperError, TargetError
from dbkeeper.jobspec import ConfigPath, Identifier, JobSpec
from dbkeeper.targets import Target, database_reason
from dbkeeper.units import format_size

if TYPE_CHECKING:
    from psycopg import pq

FORMATS = (".csv", ".csv.gz", ".parquet")
_VERSION = re.compile(r"\.\d{8}T\d{6}Z$")
log = logging.getLogger("dbkeeper.export")


class ExportJob(JobSpec):
    task: Literal["export"]
    database: str
    table: Identifier | None = None
    query: str | None = None
    path: ConfigPath
    keep: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _source_and_format(self) -> ExportJob:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' and 'query'")
        if self.query is not None and not self.query.lstrip().lower().startswith(
            ("select", "with", "values")
        ):
            raise ValueError("'query' must be one SELECT (or WITH ... SELECT) statement")
        if not self.path.endswith(FORMATS):
            raise ValueError(f"'path' must end with one of {', '.join(FORMATS)}")
        return self

    @property
    def suffix(self) -> str:
        return next(s for s in sorted(FORMATS, key=len, reverse=True) if self.path.endswith(s))

    def source(self, target: Target) -> str:
        """The SELECT that is exported: the table's rows, or the checked query."""
        if self.table is not None:
            return f"SELECT * FROM {target.quote(self.table)}"
        assert self.query is not None
        return self.query.strip().rstrip(";")

    def check(self, ctx: RunContext) -> None:
        target = ctx.target()
        if self.table is not None:
            target.columns(self.table)
            return
        with connect(ctx) as conn:
            try:  # EXPLAIN plans the query without running it, and refuses several
                conn.execute(text(f"EXPLAIN {self.source(target)}"))
            except DBAPIError as exc:
                raise TargetError(f"query: {database_reason(exc)}") from None

    def versions(self) -> list[Path]:
        """Earlier versions of the file, oldest first."""
        path = Path(self.path)
        stem = path.name[: -len(self.suffix)]
        found = path.parent.glob(f"{stem}.*{self.suffix}")
        named = [p for p in found if _VERSION.search(p.name[: -len(self.suffix)])]
        return sorted(named, key=lambda p: p.name)

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        self.check(ctx)
        target = ctx.target()
        with connect(ctx) as conn:
            rows = conn.execute(text(f"SELECT count(*) FROM ({self.source(target)}) AS s"))
            count = int(rows.scalar_one())
        current = Path(self.path)
        return {
            "source": self.source(target),
            "rows": count,
            "path": self.path,
            "replaces": str(current) if current.exists() else None,
            "versions_kept": len(self.versions()),
        }

    def run(self, ctx: RunContext) -> Outcome:
        target = ctx.target()
        copying = target.backend == "postgresql" and self.suffix != ".parquet"
        if not (copying and self.table is not None):  # COPY looks the table up itself
            self.check(ctx)
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        began = time.monotonic()
        try:
            if copying:
                counted, written = _copy_csv(ctx, self.source(target), temporary, self.table)
                typed = False
            else:
                counted, written, typed = _arrow_export(ctx, target, self.source(target), temporary)
            if counted != written:
                raise DbkeeperError(
                    f"wrote {written} rows but the database held {counted}; file not replaced"
                )
            previous = self._keep_previous(path)
            durable.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        versions = self.versions()
        removed = [str(old) for old in versions[: max(0, len(versions) - self.keep)]]
        for old in removed:
            Path(old).unlink(missing_ok=True)
        size = path.stat().st_size
        result = {
            "file": str(path),
            "rows": written,
            "rows_in_database": counted,
            "bytes": size,
            "seconds": round(time.monotonic() - began, 3),
            "previous": previous,
            "removed": removed,
            "typed": typed,
        }
        return Outcome(written, result, f"{written} rows to {path.name}, {format_size(size)}")

    def _keep_previous(self, path: Path) -> str | None:
        """Link the current file under a timestamped name; the rename then replaces it
        without a moment where ``path`` is missing."""
        if not path.exists() or self.keep == 0:
            return None
        moment = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
        version = path.with_name(f"{path.name[: -len(self.suffix)]}.{moment}{self.suffix}")
        if not version.exists():
            os.link(path, version)
        return str(version)


def _arrow_export(ctx: RunContext, target: Target, query: str, out: Path) -> tuple[int, int, bool]:
    """Stream the query's Arrow batches into the file; count in the same snapshot. Rows
    whose column types vary are read again with one type per column (see
    ``dbkeeper.batches``), which the last value returned says."""
    with batches.snapshot(target) as snapshot:
        counted = snapshot.count(query)
        try:
            with snapshot.rows(query) as rows:
                return counted, _write(ctx, rows, out, counted), False
        except batches.MixedTypes:
            log.info(
                "job %s: column types vary between rows; reading with one type per column",
                ctx.job.name,
            )
            with snapshot.rows(query, typed=True) as rows:
                return counted, _write(ctx, rows, out, counted), True


def _write(ctx: RunContext, rows: batches.Rows, out: Path, counted: int) -> int:
    """Write every batch to ``out`` (replaced); returns the rows written."""
    with (
        _writer(out, rows.schema) as write,
        closing(durable.WriteBehind(out)) as write_behind,
    ):
        written = 0
        for batch in rows.batches:
            ctx.check_cancelled()
            write(batch)
            write_behind()
            written += batch.num_rows
            ctx.progress(100 * written / max(counted, 1), written)
    return written


@contextmanager
def _writer(out: Path, schema: Any) -> Iterator[Any]:
    """A function writing record batches to ``out`` in the format its name says."""
    import pyarrow as pa

    name = out.name.removesuffix(".tmp")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq  # only here: it loads pyarrow's cloud file systems too

        with pq.ParquetWriter(out, schema, compression="zstd") as parquet:
            yield parquet.write_batch
        return
    import pyarrow.csv as pa_csv

    sink = pa.CompressedOutputStream(str(out), "gzip") if name.endswith(".gz") else str(out)
    with pa_csv.CSVWriter(sink, schema) as csv:
        yield csv.write_batch


def _copy_csv(ctx: RunContext, query: str, out: Path, table: str | None) -> tuple[int, int]:
    """PostgreSQL's own CSV writer, COPY (one statement: one snapshot), read straight
    from libpq: psycopg's row iterator costs more per row than the server takes to make
    one. A table is looked up on the same connection (a missing one gets the error
    ``check`` gives), and progress is measured against the planner's estimate of its
    rows (none for a query). Returns the rows PostgreSQL says it sent and the rows that
    arrived (one per message after the header)."""
    import psycopg
    from psycopg import pq

    target = ctx.target()
    copy_sql = f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)"
    # closing, not the connection's own exit: that would try a rollback mid-COPY
    with closing(
        psycopg.connect(target.libpq_url(), autocommit=True, application_name=ctx.application_name)
    ) as conn:
        estimate = 0
        if table is not None:
            found = conn.execute(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [target.quote(table)]
            ).fetchone()
            if found is None:
                target.columns(table)  # raises the error naming the tables there are
            estimate = max(0, int(found[0])) if found else 0
        pgconn = conn.pgconn
        with (
            ctx.token.interrupting(conn.cancel),
            gzip.open(out, "wb", compresslevel=6)
            if out.name.endswith(".gz.tmp")
            else open(out, "wb") as sink,
            closing(durable.WriteBehind(out)) as write_behind,
        ):

            def waiting(messages: int) -> None:
                write_behind()
                ctx.progress(min(99.0, 100 * messages / estimate) if estimate else 0, messages)

            pgconn.send_query(copy_sql.encode())
            _expect(_next_result(pgconn), pq.ExecStatus.COPY_OUT)
            messages = _copy_out(pgconn, sink.write, waiting)
            done = _expect(_next_result(pgconn), pq.ExecStatus.COMMAND_OK)
            while _next_result(pgconn) is not None:
                pass
        sent = done.command_tuples or 0
    ctx.progress(100, sent)
    return sent, messages - 1


def _copy_out(
    pgconn: pq.abc.PGconn,
    write: Callable[[memoryview], object],
    waiting: Callable[[int], None],
) -> int:
    """Write each message of a COPY TO until its end; returns how many there were.
    ``waiting`` is told the count so far whenever everything received is written."""
    messages = 0
    while True:
        size, data = pgconn.get_copy_data(1)
        if size > 0:
            write(data)
            messages += 1
        elif size == 0:  # nothing buffered
            waiting(messages)
            _receive(pgconn)
        else:
            return messages


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    while pgconn.is_busy():
        _receive(pgconn)
    return pgconn.get_result()


def _receive(pgconn: pq.abc.PGconn) -> None:
    """Wait for the server's next bytes without holding the GIL, and take them in."""
    select.select([pgconn.socket], [], [])
    pgconn.consume_input()


def _expect(result: pq.abc.PGresult | None, status: pq.ExecStatus) -> pq.abc.PGresult:
    import psycopg.errors
    from psycopg import pq

    if result is None or result.status != status:
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result)
        got = "no result" if result is None else pq.ExecStatus(result.status).name
        raise DbkeeperError(f"COPY ended unexpectedly ({got})")
    return result
