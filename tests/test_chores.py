"""The chore kinds: sql (SQLite and PostgreSQL), command and files, each with its failure path."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import sqlite_data as db
from tests.conftest import Project

History = Callable[..., list[dict[str, Any]]]


# -- sql ----------------------------------------------------------------------------------


def _scores_sqlite(project: Project) -> str:
    db.create(
        project.path / "app.db",
        "CREATE TABLE scores (id INTEGER PRIMARY KEY, points INT, score INT, changed TEXT);"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, today INT);"
        "INSERT INTO counters VALUES ('visits', 41), ('signups', 3);",
        [(i, i, None, "2026-01-01 00:00:00") for i in range(1, 25_001)],
        "INSERT INTO scores VALUES (?, ?, ?, ?)",
    )
    return "sqlite:///app.db"


def _scores_postgres(pg_url: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE scores (id int PRIMARY KEY, points int, score int, changed timestamptz)"
        )
        conn.execute(
            "INSERT INTO scores SELECT i, i, NULL, '2026-01-01' FROM generate_series(1, 25000) i"
        )
        conn.execute("CREATE TABLE counters (name text PRIMARY KEY, today int)")
        conn.execute("INSERT INTO counters VALUES ('visits', 41), ('signups', 3)")
        conn.execute("CREATE FUNCTION cleanup_old_logs() RETURNS int LANGUAGE sql AS 'SELECT 7'")
    return pg_url


def _query(url: str, project: Project, sql: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        return db.query(project.path / "app.db", sql)
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql))


@pytest.fixture(params=["sqlite", "postgresql"])
def scores(request: pytest.FixtureRequest, project: Project) -> str:
    if request.param == "sqlite":
        return _scores_sqlite(project)
    return _scores_postgres(request.getfixturevalue("pg_url"))


def test_sql_batched_update_repeats_until_zero_each_batch_its_own_transaction(
    project: Project, scores: str, history: History
) -> None:
    rescore = (
        "UPDATE scores SET score = points * :factor WHERE id IN "
        "(SELECT id FROM scores WHERE score IS NULL ORDER BY id LIMIT :batch_size)"
    )
    project.write_config(
        f"""
        [databases.app]
        url = "{scores}"

        [jobs.rescore]
        task = "sql"
        database = "app"
        sql = "{rescore}"
        params = {{ factor = 3 }}
        repeat_until_zero = true
        batch_size = 10000

        [jobs.reset-counters]
        task = "sql"
        database = "app"
        sql = ["UPDATE counters SET today = 0", "UPDATE counters SET today = 1 WHERE name = :name"]
        params = {{ name = "visits" }}
        """
    )
    preview = project.cli("preview", "rescore", "--json")
    assert preview.returncode == 0, preview.stderr
    assert preview.json()["statements"][0]["plan"]  # EXPLAIN output, nothing changed
    assert _query(scores, project, "SELECT count(*) FROM scores WHERE score IS NULL") == [(25000,)]

    result = project.cli("run", "rescore", "reset-counters")
    assert result.returncode == 0, result.stderr
    assert _query(scores, project, "SELECT count(*) FROM scores WHERE score = points * 3") == [
        (25000,)
    ]
    run = history("rescore")[0]
    assert run["rows_affected"] == 25000
    # 10,000 + 10,000 + 5,000, then one execution that changed nothing.
    assert run["result"]["statements"][0]["executions"] == 4
    assert sorted(_query(scores, project, "SELECT name, today FROM counters")) == [
        ("signups", 0),
        ("visits", 1),
    ]
    assert history("reset-counters")[0]["rows_affected"] == 3


def test_sql_failure_names_the_statement_and_keeps_earlier_statements(
    project: Project, scores: str, history: History
) -> None:
    project.write_config(
        f"""
        [databases.app]
        url = "{scores}"

        [jobs.broken]
        task = "sql"
        database = "app"
        sql = ["UPDATE counters SET today = 0", "UPDATE no_such_table SET x = 1"]
        """
    )
    check = project.cli("check")
    assert check.returncode == 1
    assert "job 'broken': statement 2:" in check.stderr and "no_such_table" in check.stderr
    result = project.cli("run", "broken")
    assert result.returncode == 1
    run = history("broken")[0]
    assert run["status"] == "failed" and run["error"].startswith("statement 2:")
    assert run["result"]["statements"][0]["rows"] == 2
    assert _query(scores, project, "SELECT sum(today) FROM counters") == [(0,)]


def test_sql_calls_a_stored_function_and_records_what_it_returned(
    project: Project, pg_url: str, history: History
) -> None:
    _scores_postgres(pg_url)
    project.write_config(
        f"""
        [databases.app]
        url = "{pg_url}"

        [jobs.cleanup]
        task = "sql"
        database = "app"
        sql = "SELECT cleanup_old_logs()"
        """
    )
    assert project.cli("run", "cleanup").returncode == 0
    assert history("cleanup")[0]["result"]["statements"][0]["returned"] == [[7]]


def test_sql_since_last_success(project: Project, history: History) -> None:
    _scores_sqlite(project)
    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.touch]
        task = "sql"
        database = "app"
        sql = "UPDATE scores SET score = 1 WHERE changed > :last_success"
        """
    )
    assert project.cli("run", "touch").returncode == 0
    assert history("touch")[0]["rows_affected"] == 25000  # first run: since the epoch
    db.create(
        project.path / "app.db",
        "UPDATE scores SET changed = datetime('now', '+1 hour') WHERE id <= 10",
    )
    assert project.cli("run", "touch").returncode == 0
    assert history("touch")[0]["rows_affected"] == 10


# -- command --------------------------------------------------------------------------------


def test_command_records_exit_code_and_output_tails(project: Project, history: History) -> None:
    (project.path / "work").mkdir()
    code = (
        "import os, sys; print(os.getcwd(), os.environ['TOKEN']); "
        "print('x' * 9999, file=sys.stderr)"
    )
    project.write_config(
        f"""
        [jobs.fetch]
        task = "command"
        command = ["python3", "-c", "{code}"]
        cwd = "work"
        env = {{ TOKEN = "abc" }}

        [jobs.fails]
        task = "command"
        command = "echo oh no >&2; exit 3"
        shell = true
        """
    )
    assert project.cli("run", "fetch").returncode == 0
    run = history("fetch")[0]
    assert run["result"]["exit_code"] == 0
    assert run["result"]["stdout_tail"] == f"{project.path / 'work'} abc\n"
    assert len(run["result"]["stderr_tail"]) == 4096

    assert project.cli("run", "fails").returncode == 1
    run = history("fails")[0]
    assert run["status"] == "failed"
    assert run["error"] == "/bin/sh failed: exit code 3 oh no"
    assert run["result"]["exit_code"] == 3


def test_command_timeout_kills_the_whole_process_tree(project: Project, history: History) -> None:
    pids = project.path / "pids"
    script = (
        f"sleep 300 & echo $! >> {pids}; "
        f"(sleep 300 & echo $! >> {pids}; wait) & "
        f"echo $$$$ >> {pids}; wait"  # $$ is how config writes a dollar
    )
    project.write_config(
        f"""
        [jobs.hang]
        task = "command"
        command = "{script}"
        shell = true
        timeout = "2s"
        """
    )
    began = time.monotonic()
    assert project.cli("run", "hang").returncode == 1
    assert time.monotonic() - began < 15
    run = history("hang")[0]
    assert run["status"] == "timed_out"
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 3
    time.sleep(0.5)
    for pid in started:
        assert not _alive(pid), f"process {pid} outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_command_that_cannot_start_is_a_clear_failure(project: Project, history: History) -> None:
    project.write_config(
        """
        [jobs.missing]
        task = "command"
        command = ["no-such-program-here", "--flag"]
        """
    )
    assert project.cli("run", "missing").returncode == 1
    assert history("missing")[0]["error"] == (
        "cannot start 'no-such-program-here': No such file or directory"
    )


# -- files ----------------------------------------------------------------------------------


def _touch(path: Path, age: timedelta, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    moment = (datetime.now(UTC) - age).timestamp()
    os.utime(path, (moment, moment), follow_symlinks=False)
    return path


def test_files_deletes_old_matches_keeps_newest_and_never_leaves_the_folder(
    project: Project, history: History
) -> None:
    tmp = project.path / "tmp"
    day = timedelta(days=1)
    for n in range(1, 6):
        _touch(tmp / f"export-{n}.csv", n * day)  # 1..5 days old
    _touch(tmp / "nested" / "old.csv", 10 * day)
    _touch(tmp / "keep.txt", 10 * day)  # does not match
    outside = _touch(project.path / "precious" / "data.csv", 10 * day)
    (tmp / "escape").symlink_to(project.path / "precious", target_is_directory=True)
    (tmp / "link.csv").symlink_to(outside)
    os.utime(tmp / "link.csv", (0, 0), follow_symlinks=False)
    project.write_config(
        """
        [jobs.clean-tmp]
        task = "files"
        path = "tmp"
        pattern = "*.csv"
        older_than = "36h"
        keep_last = 2
        """
    )
    preview = project.cli("preview", "clean-tmp", "--json").json()
    # Newest two matches are kept whatever their age; the link goes, its target stays.
    expected = ["link.csv", "nested/old.csv", "export-5.csv", "export-4.csv", "export-3.csv"]
    assert [sample["file"] for sample in preview["samples"]] == expected
    assert project.cli("run", "clean-tmp").returncode == 0
    left = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*"))
    assert left == ["escape", "export-1.csv", "export-2.csv", "keep.txt", "nested"]
    assert outside.exists()
    assert history("clean-tmp")[0]["result"]["deleted"] == 5


def test_files_failures_are_reported(project: Project, history: History) -> None:
    project.write_config(
        """
        [jobs.clean]
        task = "files"
        path = "nowhere"
        older_than = "1d"
        """
    )
    result = project.cli("run", "clean")
    assert result.returncode == 1
    assert history("clean")[0]["error"] == f"path {project.path / 'nowhere'} is not a folder"
    if os.geteuid() == 0:
        return  # root deletes from read-only folders
    locked = project.path / "nowhere"
    _touch(locked / "a.log", timedelta(days=3))
    locked.chmod(0o500)
    try:
        assert project.cli("run", "clean").returncode == 1
        run = history("clean")[0]
        assert run["result"]["failed"] == 1 and run["result"]["failures"][0]["file"] == "a.log"
    finally:
        locked.chmod(0o700)
