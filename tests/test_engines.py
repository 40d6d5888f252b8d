"""The same purge/vacuum/optimize/health contract on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from tests.conftest import Project

History = Callable[..., list[dict[str, Any]]]


@dataclass
class Database:
    url: str
    engine: Engine

    def execute(self, sql: str, params: Any = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params or {})

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]

    def ids(self, table: str) -> list[int]:
        return [row[0] for row in self.rows(f"SELECT id FROM {table} ORDER BY id")]

    def snapshot(self, table: str) -> list[tuple[Any, ...]]:
        return self.rows(f"SELECT * FROM {table} ORDER BY id")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, project: Project) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{project.path / 'app.db'}"
        engine = create_engine(url)
    else:
        url = request.getfixturevalue("pg_url")
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield Database(url, engine)
    engine.dispose()


def _configure(project: Project, database: Database, jobs: str) -> None:
    project.write_config(f'[databases.app]\nurl = "{database.url}"\n{jobs}')


PURGE = """
[jobs.purge]
task = "purge"
database = "app"
table = "events"
column = "at"
older_than = "1d"
{extra}
"""


def _events(database: Database, now: datetime) -> None:
    database.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at BIGINT, status VARCHAR(40))")
    cutoff = now - timedelta(days=1)
    moments = {
        1: cutoff - timedelta(days=30),
        2: cutoff - timedelta(minutes=10),
        3: cutoff + timedelta(minutes=10),
        4: now,
        5: cutoff - timedelta(minutes=10),
        6: cutoff - timedelta(days=2),
    }
    statuses = {1: "done", 2: "done", 3: "done", 4: "done", 5: "failed", 6: "x' OR '1'='1"}
    database.execute(
        "INSERT INTO events VALUES (:id, :at, :status)",
        [
            {"id": i, "at": int(moment.timestamp() * 1000), "status": statuses[i]}
            for i, moment in moments.items()
        ],
    )


def test_purge_preview_equals_run_at_the_boundary(
    project: Project, database: Database, history: History
) -> None:
    _events(database, datetime.now(UTC))
    _configure(project, database, PURGE.format(extra=""))
    before = database.snapshot("events")
    preview = project.cli("preview", "purge", "--json")
    assert preview.returncode == 0, preview.stderr
    assert preview.json()["rows"] == 4
    assert preview.json()["format"] == "unix_ms"
    assert database.snapshot("events") == before
    run = project.cli("run", "purge", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.json()[0]["rows_affected"] == 4
    assert database.ids("events") == [3, 4]
    assert [r["rows_affected"] for r in history("purge")] == [4]


def test_where_filters_are_bound_values(project: Project, database: Database) -> None:
    _events(database, datetime.now(UTC))
    _configure(project, database, PURGE.format(extra='where = { status = "done" }'))
    assert project.cli("run", "purge").returncode == 0
    assert database.ids("events") == [3, 4, 5, 6]
    _configure(project, database, PURGE.format(extra="where = { status = \"x' OR '1'='1\" }"))
    assert project.cli("run", "purge").returncode == 0
    assert database.ids("events") == [3, 4, 5]


def test_unknown_columns_are_refused_and_nothing_changes(
    project: Project, database: Database
) -> None:
    _events(database, datetime.now(UTC))
    _configure(project, database, PURGE.format(extra='where = { state = "done" }'))
    before = database.snapshot("events")
    result = project.cli("check")
    assert result.returncode == 1
    assert "table 'events' in database 'app' has no column 'state'" in result.stderr
    assert project.cli("run", "purge").returncode == 1
    assert database.snapshot("events") == before


def test_guard_refuses_deleting_every_row(project: Project, database: Database) -> None:
    _events(database, datetime.now(UTC))
    _configure(project, database, PURGE.format(extra="").replace('"1d"', '"1ms"'))
    before = database.snapshot("events")
    result = project.cli("run", "purge")
    assert result.returncode == 1
    assert "would delete all 6 rows of 'events'" in result.stdout + result.stderr
    assert database.snapshot("events") == before


def test_vacuum_optimize_and_health(project: Project, database: Database) -> None:
    database.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body TEXT)")
    database.execute("CREATE INDEX blobs_body ON blobs (body)")
    database.execute(
        "INSERT INTO blobs VALUES (:id, :body)",
        [{"id": i, "body": f"{i:08d}" * 60} for i in range(4000)],
    )
    database.execute("DELETE FROM blobs WHERE id % 4 <> 0")
    _configure(
        project,
        database,
        """
        [jobs.vacuum]
        task = "vacuum"
        database = "app"

        [jobs.optimize]
        task = "optimize"
        database = "app"
        mode = "analyze"

        [jobs.health]
        task = "health"
        database = "app"
        warn_size = "1TB"
        """,
    )
    result = project.cli("run", "vacuum", "optimize", "health", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    vacuum, optimize, health = (run["result"] for run in result.json())
    assert vacuum["bytes_saved"] == vacuum["size_before"] - vacuum["size_after"]
    assert "ANALYZE" in optimize["statements"]
    assert health["status"] in ("ok", "warning")
    blobs = [table for table in health["tables"] if table["table"] == "blobs"]
    assert blobs[0]["rows"] == 1000
    assert database.rows("SELECT count(*) FROM blobs") == [(1000,)]
    shown = project.cli("health", "app")
    assert shown.returncode == 0 and "blobs" in shown.stdout
