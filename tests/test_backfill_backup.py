"""backfill and backup on SQLite and PostgreSQL, python jobs' failure and cancellation."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests import sqlite_data as db
from tests.conftest import Project

History = Callable[..., list[dict[str, Any]]]

CLASSIFIER = """
def job_type(row):
    message = row["message"]
    if "explode" in message:
        raise ValueError("cannot classify " + message)
    if "later" in message:
        return None
    return message.split()[0].upper()
"""


def _logs(i: int) -> tuple[int, str, str | None]:
    kinds = ["import data", "export file", "explode now", "later maybe"]
    job_type = "SET" if i % 10 == 0 else ("" if i % 3 else None)
    return i, kinds[i % 4] + f" {i}", job_type


@pytest.fixture(params=["sqlite", "postgresql"])
def logs_db(request: pytest.FixtureRequest, project: Project) -> Iterator[tuple[str, Callable]]:
    rows = [_logs(i) for i in range(1, 2001)]
    if request.param == "sqlite":
        path = project.path / "app.db"
        db.create(
            path,
            "CREATE TABLE logs (id INTEGER PRIMARY KEY, message TEXT, job_type TEXT)",
            rows,
            "INSERT INTO logs VALUES (?, ?, ?)",
        )
        yield "sqlite:///app.db", lambda sql: db.query(path, sql)
        return
    url = request.getfixturevalue("pg_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE logs (id int PRIMARY KEY, message text, job_type text)")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO logs VALUES (%s, %s, %s)", rows)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as conn:
            return list(conn.execute(sql))

    yield url, query


def test_backfill_fills_empty_rows_and_records_each_failing_row(
    project: Project, logs_db: tuple[str, Callable], history: History
) -> None:
    url, query = logs_db
    (project.path / "classify.py").write_text(CLASSIFIER)
    project.write_config(
        f"""
        [databases.app]
        url = "{url}"

        [jobs.classify]
        task = "backfill"
        database = "app"
        table = "logs"
        column = "job_type"
        call = "classify:job_type"
        batch_size = 128
        """
    )
    preview = project.cli("preview", "classify", "--json").json()
    assert preview["rows"] == 1800  # every row but the 200 already set
    first = preview["samples"][0]
    assert (first["key"], first["value"]) == (1, "EXPORT")
    assert preview["samples"][1]["error"] == "ValueError: cannot classify explode now 2"
    assert query("SELECT count(*) FROM logs WHERE job_type IS NULL OR job_type = ''") == [(1800,)]

    result = project.cli("run", "classify")
    assert result.returncode == 1, result.stdout + result.stderr  # some rows failed
    run = history("classify")[0]
    assert run["status"] == "failed", (result.stdout, result.stderr, run)
    # 1800 empty rows: 400 "explode" fail, 500 "later" have no value yet, 900 filled.
    assert run["result"]["updated"] == 900
    assert run["result"]["failed"] == 400 and run["result"]["skipped"] == 500
    assert run["result"]["failures"][0] == {
        "key": 2,
        "error": "ValueError: cannot classify explode now 2",
    }
    assert query("SELECT count(*) FROM logs WHERE job_type IN ('IMPORT', 'EXPORT')") == [(900,)]
    assert query("SELECT count(*) FROM logs WHERE job_type = 'SET'") == [(200,)]
    # Failed rows are left as they were (only the ones already set have a value).
    failing = query("SELECT count(*) FROM logs WHERE message LIKE 'explode%' AND job_type <> ''")
    assert failing == [(100,)]


def test_backfill_of_a_missing_callable_or_column_is_a_clear_error(project: Project) -> None:
    db.create(project.path / "app.db", "CREATE TABLE logs (id INTEGER PRIMARY KEY, job TEXT)")
    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.classify]
        task = "backfill"
        database = "app"
        table = "logs"
        column = "job_type"
        call = "nowhere:nothing"
        """
    )
    check = project.cli("check")
    assert check.returncode == 1
    assert "table 'logs' in database 'app' has no column 'job_type'" in check.stderr


# -- backup ---------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Inserts numbered rows, one per commit, until stopped."""

    def __init__(self, insert: Callable[[int], None]) -> None:
        super().__init__(daemon=True)
        self.insert = insert
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.insert(self.written + 1)
            self.written += 1
            time.sleep(0.002)


def test_sqlite_backup_while_a_writer_commits_is_one_consistent_moment(
    project: Project, history: History
) -> None:
    path = project.path / "app.db"
    db.create(
        path,
        "PRAGMA journal_mode=WAL; CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);"
        "CREATE TABLE audit (event INTEGER, note TEXT);",
        [(i, "x" * 200) for i in range(1, 200_001)],
        "INSERT INTO events (id, body) VALUES (?, ?)",
    )
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def insert(n: int) -> None:
        # Two tables in one transaction: a consistent copy has as many audit rows as
        # events beyond the first 200,000.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (id, body) VALUES (?, 'new')", (200_000 + n,))
        conn.execute("INSERT INTO audit VALUES (?, 'added')", (200_000 + n,))
        conn.execute("COMMIT")

    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.nightly]
        task = "backup"
        database = "app"
        path = "backups/{database}-{timestamp}.db"
        keep = 2
        """
    )
    writer = Writer(insert)
    writer.start()
    try:
        time.sleep(0.2)
        for _ in range(3):
            result = project.cli("run", "nightly")
            assert result.returncode == 0, result.stderr
            time.sleep(1.1)  # a new {timestamp} each time
    finally:
        writer.stop.set()
        writer.join()
        conn.close()
    assert writer.written > 0
    backups = sorted((project.path / "backups").glob("app-*.db"))
    assert len(backups) == 2  # keep = 2: the oldest was rotated out
    run = history("nightly")[0]
    assert run["result"]["file"] == str(backups[-1]) and run["result"]["quick_check"] == "ok"
    assert len(run["result"]["removed"]) == 1
    copied = run["result"]["tables"]
    # Restore = put the file in place; it opens and holds one moment of the source.
    restored = project.path / "restored.db"
    restored.write_bytes(backups[-1].read_bytes())
    events = db.query(restored, "SELECT count(*), max(id) FROM events")[0]
    audit = db.query(restored, "SELECT count(*), max(event) FROM audit")[0]
    assert events[0] == copied["events"] and audit[0] == copied["audit"]
    assert events[0] == 200_000 + audit[0] and events[1] == 200_000 + audit[0]
    assert 0 < audit[0] <= writer.written
    source = db.query(path, "SELECT id, body FROM events WHERE id <= ? ORDER BY id", (events[1],))
    assert db.query(restored, "SELECT id, body FROM events ORDER BY id") == source


def test_postgres_backup_is_verified_and_restores(
    project: Project, pg_url: str, pg_server: str, history: History
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO events SELECT i, md5(i::text) FROM generate_series(1, 50000) i")
    writer_conn = psycopg.connect(pg_url, autocommit=True)
    writer = Writer(
        lambda n: writer_conn.execute("INSERT INTO events VALUES (%s, 'new')", (50_000 + n,))
    )
    project.write_config(
        f"""
        [databases.app]
        url = "{pg_url}"

        [jobs.dump]
        task = "backup"
        database = "app"
        path = "backups/{{database}}-{{timestamp}}.dump"
        """
    )
    writer.start()
    try:
        result = project.cli("run", "dump")
    finally:
        writer.stop.set()
        writer.join()
        writer_conn.close()
    assert result.returncode == 0, result.stderr
    run = history("dump")[0]
    assert run["result"]["pg_restore_list"] == "ok" and run["result"]["tables"] == 1
    # Restore into a new database with pg_restore, as the README says.
    name = f"dbk_restore_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    restored = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        subprocess.run(["pg_restore", "--dbname", restored, run["result"]["file"]], check=True)
        with psycopg.connect(restored) as conn:
            count, top = conn.execute("SELECT count(*), max(id) FROM events").fetchone()
        assert count == top and 50_000 <= count <= 50_000 + writer.written
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_backup_failure_leaves_no_file(project: Project, history: History) -> None:
    project.write_config(
        """
        [databases.app]
        url = "postgresql://postgres@127.0.0.1:1/nowhere"

        [jobs.dump]
        task = "backup"
        database = "app"
        path = "backups/{database}-{date}.dump"
        """
    )
    assert project.cli("run", "dump").returncode == 1
    run = history("dump")[0]
    assert run["status"] == "failed" and run["error"].startswith("pg_dump failed")
    assert list((project.path / "backups").iterdir()) == []


# -- python -----------------------------------------------------------------------------------

TASKS = """
import time

def slow(ctx, steps):
    for step in range(steps):
        ctx.check_cancelled()
        ctx.progress(100 * step / steps, step, f"step {step}")
        time.sleep(0.1)
    return {"rows_affected": steps, "steps": steps}

def broken(ctx):
    raise RuntimeError("the API answered 503")
"""


def test_python_jobs_report_progress_fail_clearly_and_notice_cancellation(
    project: Project, history: History
) -> None:
    (project.path / "tasks.py").write_text(TASKS)
    project.write_config(
        """
        [jobs.fast]
        task = "python"
        call = "tasks:slow"
        args = { steps = 3 }

        [jobs.broken]
        task = "python"
        call = "tasks:broken"

        [jobs.slow]
        task = "python"
        call = "tasks:slow"
        args = { steps = 1000 }
        timeout = "1s"
        """
    )
    assert project.cli("run", "fast").returncode == 0
    assert history("fast")[0]["rows_affected"] == 3
    assert project.cli("run", "broken").returncode == 1
    run = history("broken")[0]
    assert run["error"] == "RuntimeError: the API answered 503"
    assert "tasks.py" in run["result"]["traceback"]
    began = time.monotonic()
    assert project.cli("run", "slow").returncode == 1
    assert time.monotonic() - began < 10
    run = history("slow")[0]
    # Stopped between steps, with the rows it reported so far.
    assert run["status"] == "timed_out" and 5 <= run["rows_affected"] <= 15
