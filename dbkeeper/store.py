"""The state store: jobs, runs, nodes and health reports, on SQLite or PostgreSQL.

One SQLAlchemy Core schema serves both. The unique key (job, scheduled_for,
attempt) on runs is what makes a slot run at most once however many processes
race for it: claiming is an INSERT, and only one INSERT can win.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateColumn
from sqlalchemy.types import TypeDecorator

from dbkeeper.errors import DbkeeperError
from dbkeeper.models import (
    JobChange,
    JobDefinition,
    JobState,
    Node,
    Pause,
    Run,
    RunStatus,
    Trigger,
)
from dbkeeper.targets import SQLITE_BUSY_TIMEOUT_MS
from dbkeeper.version import __version__

SCHEMA_VERSION = 3  # 2: notices; 3: chains, runtime jobs, pauses
# A node's id: its host and process, a tag drawn once per process (a process that reuses
# an old pid gets another) and the count of nodes the process registered: ``keeper.run``
# registers one a run, and a random tag alone would repeat within thousands of them.
_PROCESS_TAG = os.urandom(3).hex()
_REGISTERED = itertools.count(1)
# The PostgreSQL advisory lock key serialising migrations ("dbkeeper" in ASCII).
MIGRATION_LOCK = 0x64626B6565706572


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Id = BigInteger().with_variant(Integer, "sqlite")
metadata = MetaData()

meta_table = Table(
    "dbkeeper_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
jobs_table = Table(
    "dbkeeper_jobs",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("cursor", UTCDateTime),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("last_status", String(20)),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("paused_at", UTCDateTime),
    Column("paused_by", String(200)),
    Column("pause_reason", Text),
)
runs_table = Table(
    "dbkeeper_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job", String(200), nullable=False),
    Column("scheduled_for", UTCDateTime, nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("trigger", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("progress", Float, nullable=False, default=0.0),
    Column("rows_affected", BigInteger),
    Column("result", JSON),
    Column("error", Text),
    Column("node", String(200)),
    Column("upstream_run", Id),
    Column("with_downstream", Boolean, nullable=False, server_default=true()),
    UniqueConstraint("job", "scheduled_for", "attempt", name="dbkeeper_runs_slot"),
    Index("dbkeeper_runs_status", "status"),
    Index("dbkeeper_runs_finished", "finished_at"),
    # One run of a job per upstream run: however many nodes see it end.
    Index("dbkeeper_runs_upstream", "job", "upstream_run", unique=True),
)
definitions_table = Table(
    "dbkeeper_job_definitions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("options", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("updated_by", String(200), nullable=False),
)
changes_table = Table(
    "dbkeeper_job_changes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job", String(200), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("action", String(20), nullable=False),
    Column("by", String(200), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("dbkeeper_job_changes_job", "job", "id"),
)
# Columns added to existing tables, by the schema version that added them.
ADDED_COLUMNS = {
    3: [
        runs_table.c.upstream_run,
        runs_table.c.with_downstream,
        jobs_table.c.paused_at,
        jobs_table.c.paused_by,
        jobs_table.c.pause_reason,
    ],
}
ADDED_INDEXES = {3: [i for i in runs_table.indexes if i.name == "dbkeeper_runs_upstream"]}
JOBS_VERSION = "jobs_version"  # bumped by every runtime change to the set of jobs
nodes_table = Table(
    "dbkeeper_nodes",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(50), nullable=False),
    Column("role", String(20), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
)
locks_table = Table(
    "dbkeeper_locks",
    metadata,
    Column("resource", String(400), primary_key=True),
    Column("run_id", Id, nullable=False),
    Column("node", String(200), nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
)
notices_table = Table(
    "dbkeeper_notices",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("sent_at", UTCDateTime, nullable=False),
)

health_table = Table(
    "dbkeeper_health",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("database", String(200), nullable=False),
    Column("run_id", Id),
    Column("taken_at", UTCDateTime, nullable=False),
    Column("status", String(20), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("report", JSON, nullable=False),
    Index("dbkeeper_health_database", "database", "taken_at"),
)


@dataclass(frozen=True)
class Ending:
    """A run's end, to record."""

    run_id: int
    status: RunStatus
    started_at: datetime
    rows_affected: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Claim:
    """A run to record for a slot (or for an upstream run), if nobody holds it yet."""

    job: str
    scheduled_for: datetime
    status: RunStatus
    trigger: Trigger
    node: str | None
    attempt: int = 1
    error: str | None = None
    upstream_run: int | None = None
    with_downstream: bool = True

    @property
    def settles(self) -> bool:
        """Whether the run ends as it is recorded (and so counts in the job's last status)."""
        return self.status.final and self.status is not RunStatus.SKIPPED

    @property
    def key(self) -> tuple[str, datetime, int, int | None]:
        return (self.job, self.scheduled_for, self.attempt, self.upstream_run)

    def values(self, moment: datetime) -> dict[str, Any]:
        return {
            "job": self.job,
            "scheduled_for": self.scheduled_for,
            "attempt": self.attempt,
            "trigger": self.trigger.value,
            "status": self.status.value,
            "created_at": moment,
            "started_at": moment if self.status is RunStatus.RUNNING else None,
            "finished_at": moment if self.status.final else None,
            "progress": 0.0,
            "node": self.node,
            "error": self.error,
            "upstream_run": self.upstream_run,
            "with_downstream": self.with_downstream,
        }


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now() -> datetime:
    return datetime.now(UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    dbapi_connection.execute("PRAGMA journal_mode = WAL")
    dbapi_connection.execute("PRAGMA synchronous = NORMAL")


class StateStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        # SQLite lets one writer in at a time, and a blocked writer sleeps in growing steps
        # (busy_timeout); this process's threads queue on a lock instead and go in the moment
        # the writer before them commits. Other processes still meet the busy timeout.
        self._write_lock = threading.Lock()
        parsed = make_url(url)
        shown = parsed.render_as_string()
        try:
            self.sqlite = parsed.get_backend_name() == "sqlite"
            if self.sqlite:
                self.engine = create_engine(
                    url, isolation_level="AUTOCOMMIT", json_serializer=_dumps
                )
                event.listen(self.engine, "connect", _configure_sqlite)
            else:
                self.engine = create_engine(url, pool_pre_ping=True, json_serializer=_dumps)
        except SQLAlchemyError as exc:
            raise DbkeeperError(f"state store {shown}: {str(exc).splitlines()[0]}") from None
        try:
            self.migrate()
        except BaseException as exc:
            self.engine.dispose()
            if isinstance(exc, SQLAlchemyError):
                raise DbkeeperError(f"state store {shown}: {str(exc).splitlines()[0]}") from None
            raise

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front. Opened inside
        another of this thread's transactions, it is part of that one (one commit for a
        batch of claims)."""
        outer: Connection | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        with self._begin() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        if not self.sqlite:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")

    def _insert_new(self, table: Table, **values: Any) -> Any:
        """An INSERT that does nothing when the row's key already exists (its values given
        here, or as parameters when it is executed)."""
        # The engine's own dialect package (importing PostgreSQL's would cost about 20 ms).
        module = importlib.import_module(f"sqlalchemy.dialects.{self.engine.dialect.name}")
        statement = module.insert(table)
        return (statement.values(**values) if values else statement).on_conflict_do_nothing()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection to read with: this thread's open transaction, if it has one."""
        outer: Connection | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        with self.engine.connect() as conn:
            yield conn

    # -- schema -------------------------------------------------------------

    def migrate(self) -> None:
        """Create the schema, or bring an older one up to SCHEMA_VERSION."""
        with self.transaction() as conn:
            if not self.sqlite:  # nodes starting together must not race to create tables
                conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            metadata.create_all(conn, checkfirst=True)
            found = conn.execute(
                select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar()
            version = int(found) if found is not None else 0
            if version > SCHEMA_VERSION:
                raise DbkeeperError(
                    f"state store schema is version {version}; this dbkeeper knows "
                    f"{SCHEMA_VERSION}: upgrade dbkeeper"
                )
            if found is None:
                conn.execute(
                    insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION))
                )
            elif version < SCHEMA_VERSION:  # create_all added the newer tables
                self._add_columns(conn, version)
                conn.execute(
                    update(meta_table)
                    .where(meta_table.c.key == "schema_version")
                    .values(value=str(SCHEMA_VERSION))
                )
            conn.execute(self._insert_new(meta_table, key=JOBS_VERSION, value="0"))

    @staticmethod
    def _add_columns(conn: Connection, version: int) -> None:
        for added in range(version + 1, SCHEMA_VERSION + 1):
            for column in ADDED_COLUMNS.get(added, []):
                definition = CreateColumn(column).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {column.table.name} ADD COLUMN {definition}")
            for index in ADDED_INDEXES.get(added, []):
                index.create(conn, checkfirst=True)

    def schema_version(self) -> int:
        with self.reading() as conn:
            return int(
                conn.execute(
                    select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).scalar_one()
            )

    # -- jobs ---------------------------------------------------------------

    def register_jobs(self, names: Sequence[str], at: datetime) -> None:
        """Give each new job a row whose cursor starts at ``at``: no backfill of the past."""
        with self.transaction() as conn:
            for name in names:
                conn.execute(
                    self._insert_new(
                        jobs_table, name=name, cursor=at, consecutive_failures=0, updated_at=at
                    )
                )

    def job_states(self) -> dict[str, JobState]:
        with self.reading() as conn:
            rows = conn.execute(select(jobs_table)).all()
        return {
            row.name: JobState(
                name=row.name,
                cursor=row.cursor,
                consecutive_failures=row.consecutive_failures,
                last_status=RunStatus(row.last_status) if row.last_status else None,
                paused=(
                    Pause(at=row.paused_at, by=row.paused_by or "", reason=row.pause_reason or "")
                    if row.paused_at
                    else None
                ),
            )
            for row in rows
        }

    def cursors(self) -> dict[str, datetime | None]:
        """Each registered job's cursor: the last slot accounted for."""
        with self.reading() as conn:
            rows = conn.execute(select(jobs_table.c.name, jobs_table.c.cursor)).all()
        return {name: cursor for name, cursor in rows}

    def restart_cursor(self, conn: Connection, job: str, at: datetime) -> None:
        """Start a job's schedule afresh from ``at`` (new, changed or resumed: no catch-up)."""
        self.register_jobs([job], at)
        conn.execute(
            update(jobs_table).where(jobs_table.c.name == job).values(cursor=at, updated_at=at)
        )

    def lock_jobs(self, names: Sequence[str]) -> None:
        """Hold these jobs' rows until the transaction ends (in name order: no deadlock)."""
        if self.sqlite:  # the write transaction already holds the whole database
            return
        with self.transaction() as conn:
            conn.execute(
                select(jobs_table.c.name)
                .where(jobs_table.c.name.in_(sorted(names)))
                .order_by(jobs_table.c.name)
                .with_for_update()
            ).all()

    # -- runtime job definitions ----------------------------------------------

    def jobs_version(self, *, hold: bool = False) -> int:
        """The version of the runtime set of jobs. ``hold`` (inside a transaction) keeps
        changes out until it ends, so claims made under it use the current definitions."""
        query = select(meta_table.c.value).where(meta_table.c.key == JOBS_VERSION)
        if hold and not self.sqlite:
            query = query.with_for_update(read=True)
        with self.reading() as conn:
            return int(conn.execute(query).scalar_one())

    def definitions(self) -> list[JobDefinition]:
        with self.reading() as conn:
            rows = conn.execute(select(definitions_table).order_by(definitions_table.c.name))
            return [
                JobDefinition(
                    name=row.name,
                    options=dict(row.options),
                    created_at=row.created_at,
                    created_by=row.created_by,
                    updated_at=row.updated_at,
                    updated_by=row.updated_by,
                )
                for row in rows
            ]

    @contextmanager
    def changing_jobs(self) -> Iterator[Connection]:
        """A transaction that changes the set of jobs: one at a time across nodes, and
        every node sees the new version."""
        with self.transaction() as conn:
            conn.execute(
                update(meta_table)
                .where(meta_table.c.key == JOBS_VERSION)
                .values(value=cast(cast(meta_table.c.value, BigInteger) + 1, Text))
            )
            yield conn

    def put_definition(
        self, conn: Connection, name: str, options: dict[str, Any], by: str, *, new: bool
    ) -> None:
        moment = now()
        if new:
            conn.execute(
                insert(definitions_table).values(
                    name=name,
                    options=options,
                    created_at=moment,
                    created_by=by,
                    updated_at=moment,
                    updated_by=by,
                )
            )
        else:
            conn.execute(
                update(definitions_table)
                .where(definitions_table.c.name == name)
                .values(options=options, updated_at=moment, updated_by=by)
            )
        self.restart_cursor(conn, name, moment)

    def delete_definition(self, conn: Connection, name: str) -> int:
        """Remove a runtime job; its queued runs are cancelled, its history kept."""
        conn.execute(delete(definitions_table).where(definitions_table.c.name == name))
        return int(
            conn.execute(
                update(runs_table)
                .where(runs_table.c.job == name, runs_table.c.status == RunStatus.QUEUED.value)
                .values(
                    status=RunStatus.CANCELLED.value,
                    finished_at=now(),
                    error="the job was removed",
                )
            ).rowcount
        )

    def set_pause(self, conn: Connection, name: str, pause: Pause | None) -> None:
        moment = now()
        self.register_jobs([name], moment)
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.name == name)
            .values(
                paused_at=pause.at if pause else None,
                paused_by=pause.by if pause else None,
                pause_reason=pause.reason if pause else None,
                updated_at=moment,
            )
        )
        if pause is None:
            self.restart_cursor(conn, name, moment)

    def record_change(
        self, conn: Connection, job: str, action: str, by: str, detail: dict[str, Any]
    ) -> None:
        conn.execute(
            insert(changes_table).values(job=job, at=now(), action=action, by=by, detail=detail)
        )

    def changes(self, job: str | None = None, limit: int | None = 50) -> list[JobChange]:
        query = select(changes_table).order_by(changes_table.c.id.desc()).limit(limit)
        if job is not None:
            query = query.where(changes_table.c.job == job)
        with self.reading() as conn:
            return [
                JobChange(
                    job=row.job, at=row.at, action=row.action, by=row.by, detail=dict(row.detail)
                )
                for row in conn.execute(query)
            ]

    def advance_cursors(self, cursors: dict[str, datetime]) -> None:
        """Move each job's cursor forward to the slot given (never back), in one statement."""
        if not cursors:
            return
        to = bindparam("to", type_=UTCDateTime())
        statement = (
            update(jobs_table)
            .where(jobs_table.c.name == bindparam("job"))
            .where(or_(jobs_table.c.cursor.is_(None), jobs_table.c.cursor < to))
            .values(cursor=to, updated_at=now())
        )
        with self.transaction() as conn:
            conn.execute(statement, [{"job": job, "to": at} for job, at in cursors.items()])

    # -- runs ---------------------------------------------------------------

    def claim(
        self,
        job: str,
        scheduled_for: datetime,
        *,
        status: RunStatus,
        trigger: Trigger,
        node: str | None,
        attempt: int = 1,
        error: str | None = None,
        upstream_run: int | None = None,
        with_downstream: bool = True,
    ) -> int | None:
        """Insert the run for a slot (or for an upstream run); None if another process
        already holds it."""
        claim = Claim(
            job, scheduled_for, status, trigger, node, attempt, error, upstream_run, with_downstream
        )
        return self.claim_all([claim])[0]

    def claim_all(self, claims: Sequence[Claim]) -> list[int | None]:
        """Insert the runs of these claims in one statement: each one's run id, or None
        where another process holds that slot already."""
        if not claims:
            return []
        moment = now()
        statement = self._insert_new(runs_table).returning(
            runs_table.c.id,
            runs_table.c.job,
            runs_table.c.scheduled_for,
            runs_table.c.attempt,
            runs_table.c.upstream_run,
        )
        with self.transaction() as conn:
            rows = conn.execute(statement, [claim.values(moment) for claim in claims]).all()
            won = {(r.job, r.scheduled_for, r.attempt, r.upstream_run): int(r.id) for r in rows}
            ids = [won.get(claim.key) for claim in claims]
            settled = [
                (claim.job, claim.status)
                for claim, run_id in zip(claims, ids, strict=True)
                if run_id is not None and claim.settles
            ]
            self._settle_jobs(conn, settled)
        return ids

    def start_queued(self, run_id: int, node: str | None) -> bool:
        """Move a queued run to running; False if another worker took it first."""
        with self.transaction() as conn:
            result = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.status == RunStatus.QUEUED.value)
                .values(status=RunStatus.RUNNING.value, started_at=now(), node=node)
            )
        return result.rowcount == 1

    def report_progress(self, run_id: int, percent: float, rows: int | None) -> None:
        with self.transaction() as conn:
            conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id)
                .values(progress=percent, rows_affected=rows)
            )

    def finish_all(self, ends: Sequence[Ending]) -> list[Run]:
        """Record runs' ends, and when each really started (a claimed run may wait for a
        worker: its start is written here, with its end, not in a write of its own), in
        one statement for the runs and one for their jobs. Returns the runs as recorded."""
        if not ends:
            return []
        moment = now()
        ended = (
            update(runs_table)
            .where(runs_table.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                started_at=bindparam("b_started", type_=UTCDateTime),
                finished_at=bindparam("b_finished", type_=UTCDateTime),
                rows_affected=bindparam("b_rows"),
                result=bindparam("b_result", type_=runs_table.c.result.type),
                error=bindparam("b_error"),
                progress=func.coalesce(bindparam("b_progress", type_=Float), runs_table.c.progress),
            )
        )
        with self.transaction() as conn:
            conn.execute(
                ended,
                [
                    {
                        "b_id": end.run_id,
                        "b_status": end.status.value,
                        "b_started": end.started_at,
                        "b_finished": moment,
                        "b_rows": end.rows_affected,
                        "b_result": end.result or {},
                        "b_error": end.error,
                        "b_progress": 100.0 if end.status is RunStatus.SUCCEEDED else None,
                    }
                    for end in ends
                ],
            )
            ids = [end.run_id for end in ends]
            rows = conn.execute(select(runs_table).where(runs_table.c.id.in_(ids))).all()
            runs = {row.id: _run(row) for row in rows}
            self._settle_jobs(conn, [(runs[end.run_id].job, end.status) for end in ends])
        return [runs[run_id] for run_id in ids]

    def _settle_jobs(self, conn: Connection, settled: Sequence[tuple[str, RunStatus]]) -> None:
        """Each job's last status and count of failures in a row, for runs ended in order."""
        if not settled:
            return
        moment = now()
        failures = jobs_table.c.consecutive_failures
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.name == bindparam("b_job"))
            .values(
                consecutive_failures=case(
                    (bindparam("b_missed", type_=Boolean), failures),
                    (bindparam("b_failure", type_=Boolean), failures + 1),
                    else_=0,
                ),
                last_status=bindparam("b_status"),
                updated_at=bindparam("b_now", type_=UTCDateTime),
            ),
            [
                {
                    "b_job": job,
                    "b_missed": status is RunStatus.MISSED,
                    "b_failure": status.failure,
                    "b_status": status.value,
                    "b_now": moment,
                }
                for job, status in settled
            ],
        )

    def get_run(self, run_id: int) -> Run | None:
        with self.reading() as conn:
            row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).first()
        return _run(row) if row else None

    def runs(
        self,
        *,
        job: str | None = None,
        status: Sequence[RunStatus] = (),
        limit: int | None = 50,
        oldest_first: bool = False,
        upstream_run: int | None = None,
    ) -> list[Run]:
        query = select(runs_table)
        if job:
            query = query.where(runs_table.c.job == job)
        if upstream_run is not None:
            query = query.where(runs_table.c.upstream_run == upstream_run)
        if status:
            query = query.where(runs_table.c.status.in_([s.value for s in status]))
        order = (runs_table.c.id.asc(),) if oldest_first else (runs_table.c.id.desc(),)
        query = query.order_by(*order).limit(limit)
        with self.reading() as conn:
            return [_run(row) for row in conn.execute(query)]

    def running_jobs(self) -> set[str]:
        """The jobs with a run in progress."""
        query = select(runs_table.c.job).where(runs_table.c.status == RunStatus.RUNNING.value)
        with self.reading() as conn:
            return set(conn.execute(query.distinct()).scalars())

    def last_runs(self) -> dict[str, Run]:
        """Each job's most recent run, finished or not."""
        latest = (
            select(func.max(runs_table.c.id).label("id"))
            .where(runs_table.c.status != RunStatus.MISSED.value)
            .group_by(runs_table.c.job)
            .subquery()
        )
        with self.reading() as conn:
            rows = conn.execute(select(runs_table).join(latest, runs_table.c.id == latest.c.id))
            return {row.job: _run(row) for row in rows}

    def run_totals(self) -> list[tuple[str, str, int, int]]:
        """(job, status, runs, rows affected) over the retained history."""
        query = select(
            runs_table.c.job,
            runs_table.c.status,
            func.count(),
            func.coalesce(func.sum(runs_table.c.rows_affected), 0),
        ).group_by(runs_table.c.job, runs_table.c.status)
        with self.reading() as conn:
            return [(str(j), str(s), int(n), int(r)) for j, s, n, r in conn.execute(query)]

    def durations(self) -> list[tuple[str, float]]:
        """(job, seconds) of every finished run in the retained history."""
        query = select(runs_table.c.job, runs_table.c.started_at, runs_table.c.finished_at).where(
            runs_table.c.started_at.is_not(None), runs_table.c.finished_at.is_not(None)
        )
        with self.reading() as conn:
            return [
                (str(job), (finished - started).total_seconds())
                for job, started, finished in conn.execute(query)
            ]

    def last_successes(self) -> dict[str, datetime]:
        query = (
            select(runs_table.c.job, func.max(runs_table.c.finished_at))
            .where(runs_table.c.status == RunStatus.SUCCEEDED.value)
            .group_by(runs_table.c.job)
        )
        with self.reading() as conn:
            return {str(job): moment for job, moment in conn.execute(query) if moment}

    def last_triggered(self, job: str) -> datetime | None:
        """When ``job`` was last started by a job it comes after."""
        query = select(func.max(runs_table.c.created_at)).where(
            runs_table.c.job == job, runs_table.c.trigger == Trigger.UPSTREAM.value
        )
        with self.reading() as conn:
            moment: datetime | None = conn.execute(query).scalar()
        return moment

    def succeeded_since(self, jobs: Sequence[str], since: datetime | None) -> set[str]:
        """Which of ``jobs`` have a chained run (one that starts downstream jobs) that
        succeeded after ``since``."""
        query = select(runs_table.c.job).where(
            runs_table.c.job.in_(jobs),
            runs_table.c.status == RunStatus.SUCCEEDED.value,
            runs_table.c.with_downstream.is_(True),
        )
        if since is not None:
            query = query.where(runs_table.c.finished_at > since)
        with self.reading() as conn:
            return {str(job) for job in conn.execute(query.distinct()).scalars()}

    def prune(self, before: datetime) -> int:
        """Delete finished runs and health reports older than ``before``."""
        with self.transaction() as conn:
            removed = conn.execute(
                delete(runs_table).where(
                    runs_table.c.finished_at < before,
                    runs_table.c.status.notin_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]),
                )
            ).rowcount
            conn.execute(delete(health_table).where(health_table.c.taken_at < before))
            conn.execute(delete(notices_table).where(notices_table.c.sent_at < before))
            conn.execute(delete(changes_table).where(changes_table.c.at < before))
            conn.execute(
                delete(nodes_table).where(
                    or_(
                        nodes_table.c.stopped_at < before,
                        nodes_table.c.heartbeat_at < before,
                    )
                )
            )
        return int(removed)

    # -- nodes --------------------------------------------------------------

    def register_node(self, role: str) -> Node:
        moment = now()
        host = socket.gethostname()
        node = Node(
            id=f"{host}:{os.getpid()}:{_PROCESS_TAG}-{next(_REGISTERED)}",
            host=host,
            pid=os.getpid(),
            version=__version__,
            role=role,
            started_at=moment,
            heartbeat_at=moment,
        )
        with self.transaction() as conn:
            conn.execute(
                insert(nodes_table).values(
                    id=node.id,
                    host=node.host,
                    pid=node.pid,
                    version=node.version,
                    role=role,
                    started_at=moment,
                    heartbeat_at=moment,
                )
            )
        return node

    def heartbeat(self, node_id: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                update(nodes_table).where(nodes_table.c.id == node_id).values(heartbeat_at=now())
            )

    def stop_node(self, node_id: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                update(nodes_table).where(nodes_table.c.id == node_id).values(stopped_at=now())
            )

    def nodes(self) -> list[Node]:
        with self.reading() as conn:
            rows = conn.execute(select(nodes_table).order_by(nodes_table.c.started_at)).all()
        return [
            Node(
                id=row.id,
                host=row.host,
                pid=row.pid,
                version=row.version,
                role=row.role,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                stopped_at=row.stopped_at,
            )
            for row in rows
        ]

    def _live_nodes(self, lease: timedelta) -> Select[tuple[str]]:
        return select(nodes_table.c.id).where(
            nodes_table.c.stopped_at.is_(None), nodes_table.c.heartbeat_at >= now() - lease
        )

    def abandon_orphans(self, lease: timedelta) -> list[Run]:
        """Mark runs whose node is gone as abandoned; return the runs this call marked.

        A node is gone when it stopped, when its lease expired, or, on this host,
        when its process no longer exists (then nobody needs to wait for the lease).
        Locks held by gone nodes are released.
        """
        host = socket.gethostname()
        with self.transaction() as conn:
            vanished = [
                row.id
                for row in conn.execute(
                    select(nodes_table.c.id, nodes_table.c.pid).where(
                        nodes_table.c.host == host, nodes_table.c.stopped_at.is_(None)
                    )
                )
                if not pid_alive(row.pid)
            ]
            if vanished:
                conn.execute(
                    update(nodes_table)
                    .where(nodes_table.c.id.in_(vanished))
                    .values(stopped_at=now())
                )
            live = self._live_nodes(lease)
            conn.execute(delete(locks_table).where(locks_table.c.node.notin_(live)))
            candidates = [
                _run(row)
                for row in conn.execute(
                    select(runs_table).where(
                        runs_table.c.status == RunStatus.RUNNING.value,
                        or_(runs_table.c.node.is_(None), runs_table.c.node.notin_(live)),
                    )
                )
            ]
            orphans = []
            for run in candidates:
                marked = conn.execute(
                    update(runs_table)
                    .where(
                        runs_table.c.id == run.id, runs_table.c.status == RunStatus.RUNNING.value
                    )
                    .values(
                        status=RunStatus.ABANDONED.value,
                        finished_at=now(),
                        error=f"node {run.node} stopped renewing its lease",
                    )
                ).rowcount
                if marked:
                    orphans.append(run)
                    self._settle_jobs(conn, [(run.job, RunStatus.ABANDONED)])
        return orphans

    def hand_back(self, run_ids: Sequence[int]) -> None:
        """Return runs claimed but never started to the queue, for any node to take."""
        with self.transaction() as conn:
            conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.id.in_(run_ids),
                    runs_table.c.status == RunStatus.RUNNING.value,
                )
                .values(status=RunStatus.QUEUED.value, node=None, started_at=None)
            )

    def unclaim(self, claims: Sequence[tuple[int, str, datetime, datetime]]) -> None:
        """Undo claims made ahead of their slots, as (run id, job, slot, claimed at), whose
        runs never started: the runs go, and each job's cursor goes back to when its slot
        was claimed, so the slot is claimed again when it comes (by any node, or recorded
        as missed past its grace), as if it had never been claimed."""
        with self.transaction() as conn:
            for run_id, job, slot, claimed_at in claims:
                gone = conn.execute(
                    delete(runs_table).where(
                        runs_table.c.id == run_id,
                        runs_table.c.status == RunStatus.RUNNING.value,
                    )
                )
                if gone.rowcount:
                    conn.execute(
                        update(jobs_table)
                        .where(jobs_table.c.name == job, jobs_table.c.cursor == slot)
                        .values(cursor=claimed_at)
                    )

    # -- locks --------------------------------------------------------------

    def lock(self, resource: str, run_id: int, node: str, lease: timedelta) -> int | None:
        """Take ``resource`` for a run; None when taken, else the run id holding it.

        A lock whose node stopped or let its lease expire is released first.
        """
        with self.transaction() as conn:
            conn.execute(
                delete(locks_table).where(
                    locks_table.c.resource == resource,
                    locks_table.c.node.notin_(self._live_nodes(lease)),
                )
            )
            conn.execute(
                self._insert_new(
                    locks_table, resource=resource, run_id=run_id, node=node, acquired_at=now()
                )
            )
            holder = conn.execute(
                select(locks_table.c.run_id).where(locks_table.c.resource == resource)
            ).scalar_one()
        return None if holder == run_id else int(holder)

    def unlock(self, resource: str, run_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                delete(locks_table).where(
                    locks_table.c.resource == resource, locks_table.c.run_id == run_id
                )
            )

    # -- health reports -----------------------------------------------------

    def first_notice(self, key: str) -> bool:
        """Record that the notice ``key`` is being sent; False if any node already did."""
        with self.transaction() as conn:
            inserted = conn.execute(self._insert_new(notices_table, key=key, sent_at=now()))
        return bool(inserted.rowcount)

    def add_health_report(
        self, database: str, run_id: int | None, taken_at: datetime, report: dict[str, Any]
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                insert(health_table).values(
                    database=database,
                    run_id=run_id,
                    taken_at=taken_at,
                    status=report["status"],
                    size_bytes=report["size_bytes"],
                    report=report,
                )
            )

    def health_sizes(self, database: str, since: datetime) -> list[tuple[datetime, int]]:
        with self.reading() as conn:
            rows = conn.execute(
                select(health_table.c.taken_at, health_table.c.size_bytes)
                .where(health_table.c.database == database, health_table.c.taken_at >= since)
                .order_by(health_table.c.taken_at)
            ).all()
        return [(row.taken_at, int(row.size_bytes)) for row in rows]

    def latest_health(self) -> dict[str, tuple[datetime, dict[str, Any]]]:
        latest = (
            select(func.max(health_table.c.id).label("id"))
            .group_by(health_table.c.database)
            .subquery()
        )
        with self.reading() as conn:
            rows = conn.execute(
                select(health_table).join(latest, and_(health_table.c.id == latest.c.id))
            ).all()
        return {row.database: (row.taken_at, dict(row.report)) for row in rows}


def _run(row: Any) -> Run:
    return Run(
        id=row.id,
        job=row.job,
        scheduled_for=row.scheduled_for,
        attempt=row.attempt,
        trigger=Trigger(row.trigger),
        status=RunStatus(row.status),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        progress=row.progress,
        rows_affected=row.rows_affected,
        result=row.result or {},
        error=row.error,
        node=row.node,
        upstream_run=row.upstream_run,
        with_downstream=bool(row.with_downstream),
    )
