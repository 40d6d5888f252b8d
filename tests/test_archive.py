"""purge with archive: rows reach the archive before they leave the table, in every format,
on SQLite and PostgreSQL; interrupted runs are settled; archives restore; kill -9 at
random points loses and duplicates nothing."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from dbkeeper.archive import read_batches
from tests import sqlite_data as db
from tests.conftest import Project

History = Callable[..., list[dict[str, Any]]]
NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """Row times are NOW minus whole minutes plus 30 s: each test takes its own NOW, so the
    margin does not shrink with the time earlier tests took."""
    global NOW
    NOW = datetime.now(UTC)


Row = tuple[Any, ...]


def _message(i: int) -> str | None:
    # NULL, empty text, commas, quotes and newlines must all come back as they were.
    return [None, "", 'a "quoted", line\nand more', f"message {i}", "ünïcode ✓"][i % 5]


def _sqlite_rows(count: int) -> list[Row]:
    return [
        (i, (NOW - timedelta(minutes=count - i, seconds=30)).isoformat(), _message(i), i * 1.5)
        for i in range(1, count + 1)
    ]


def _sqlite_app(project: Project, count: int) -> list[Row]:
    rows = _sqlite_rows(count)
    db.create(
        project.path / "app.db",
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, ts TEXT, msg TEXT, score REAL);"
        "CREATE INDEX logs_ts ON logs(ts);",
        rows,
        "INSERT INTO logs VALUES (?, ?, ?, ?)",
    )
    return rows


def _config(project: Project, url: str, archive: str, older_than: str = "1h") -> None:
    project.write_config(
        f"""
        [databases.app]
        url = "{url}"

        [jobs.purge-logs]
        task = "purge"
        database = "app"
        table = "logs"
        column = "ts"
        older_than = "{older_than}"
        archive = "{archive}"
        """
    )


def _archived(folder: Path) -> list[Row]:
    """Every row in the committed batches of every archive under ``folder``."""
    rows: list[Row] = []
    for manifest in sorted(folder.rglob("*.manifest.jsonl")):
        for _, batch_rows in read_batches(manifest):
            rows += batch_rows
    return rows


def _states(folder: Path) -> list[str]:
    states: dict[tuple[str, int], str] = {}
    for manifest in folder.rglob("*.manifest.jsonl"):
        for line in manifest.read_text().splitlines():
            entry = json.loads(line)
            states[(str(manifest), entry["batch"])] = entry["state"]
    return sorted(states.values())


def _as_text(row: Row) -> Row:
    return tuple(None if v is None else str(v) for v in row)


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv", ".jsonl.gz", ".parquet"])
def test_sqlite_purge_archives_exactly_the_deleted_rows_and_restores_them(
    project: Project, suffix: str, history: History
) -> None:
    rows = _sqlite_app(project, 5000)
    _config(project, "sqlite:///app.db", f"archive/{{table}}/{{date}}{suffix}", "1000m")
    old = [row for row in rows if row[1] < (NOW - timedelta(minutes=1000)).isoformat()]
    assert len(old) == 4000

    result = project.cli("run", "purge-logs")
    assert result.returncode == 0, result.stderr
    assert db.ids(project.path / "app.db", "logs") == list(range(4001, 5001))
    archived = _archived(project.path / "archive")
    if suffix.startswith(".csv"):  # CSV holds text; NULL and '' stay apart
        archived = [(int(i), ts, msg, float(score)) for i, ts, msg, score in archived]
    assert sorted(archived) == old
    assert set(_states(project.path / "archive")) == {"done"}
    run = history("purge-logs")[0]
    assert run["result"]["archived"] == 4000
    assert run["rows_affected"] == 4000

    # The archive is a plain file other tools read: DuckDB sees exactly those rows.
    files = f"{project.path}/archive/logs/*{suffix}"
    found = duckdb.sql(f"SELECT count(*), min(id), max(id) FROM '{files}'").fetchall()
    assert found == [(4000, 1, 4000)]

    archive = next((project.path / "archive" / "logs").glob("*.manifest.jsonl"))
    restore = project.cli(
        "restore-archive", str(archive), "--database", "app", "--table", "logs", "--json"
    )
    assert restore.returncode == 0, restore.stderr
    assert restore.json()["rows"] == 4000
    back = db.query(project.path / "app.db", "SELECT * FROM logs ORDER BY id")
    assert back == rows


def test_archive_template_errors_name_file_line_and_key(project: Project) -> None:
    _sqlite_app(project, 10)
    _config(project, "sqlite:///app.db", "archive/{tabel}/{date}.csv.gz")
    result = project.cli("check")
    assert result.returncode == 1
    assert "dbkeeper.toml:11: job 'purge-logs', key 'archive': unknown placeholder {tabel}" in (
        result.stderr
    )
    _config(project, "sqlite:///app.db", "archive/{table}.xlsx")
    result = project.cli("check")
    assert "key 'archive'" in result.stderr and "must end with one of .csv" in result.stderr


def _forget_last_done(manifest: Path) -> dict[str, Any]:
    """Make the last batch look like a run died between its delete and its done line."""
    lines = manifest.read_text().splitlines()
    assert json.loads(lines[-1])["state"] == "done"
    manifest.write_text("\n".join(lines[:-1]) + "\n")
    return dict(json.loads(next(line for line in reversed(lines) if '"keys"' in line)))


def test_interrupted_batches_are_settled_by_looking_their_keys_up(
    project: Project, history: History
) -> None:
    rows = _sqlite_app(project, 3000)
    path = project.path / "app.db"
    _config(project, "sqlite:///app.db", "archive/{table}.csv.gz", "1000m")
    assert project.cli("run", "purge-logs").returncode == 0
    folder = project.path / "archive"
    manifest = folder / "logs.csv.gz.manifest.jsonl"
    data = folder / "logs.csv.gz"

    # 1. The delete committed but the done line was lost: marked done, nothing archived twice.
    _forget_last_done(manifest)
    assert project.cli("run", "purge-logs").returncode == 0
    recovery = history("purge-logs")[0]["result"]["archive_recovery"]
    assert recovery["committed"] == 1 and recovery["rolled_back"] == 0

    # 2. The delete rolled back: every row of the batch is still in the table, and the
    # file holds the batch plus a torn manifest line. The batch's bytes are cut off and
    # its rows archived again, once.
    batch = _forget_last_done(manifest)
    first, last = batch["keys"][0]
    db.create(
        path,
        "",
        [row for row in rows if first <= row[0] <= last],
        "INSERT INTO logs VALUES (?, ?, ?, ?)",
    )
    with manifest.open("a") as handle:
        handle.write('{"batch": 99, "state": "do')
    assert project.cli("run", "purge-logs").returncode == 0
    recovery = history("purge-logs")[0]["result"]["archive_recovery"]
    assert recovery["rolled_back"] == 1
    archived = _archived(folder)
    assert sorted(int(row[0]) for row in archived) == list(range(1, 2001))
    assert _rows_in_file(data) == 2000  # the file itself holds no stray bytes

    # 3. Half the keys are back: kept, reported as suspect, never dropped silently.
    batch = _forget_last_done(manifest)
    first, last = batch["keys"][0]
    db.create(path, "", [_sqlite_rows(3000)[first - 1]], "INSERT INTO logs VALUES (?, ?, ?, ?)")
    assert project.cli("run", "purge-logs").returncode == 0
    recovery = history("purge-logs")[0]["result"]["archive_recovery"]
    assert recovery["suspect"] == 1
    assert "suspect" in _states(folder)


def _rows_in_file(data: Path) -> int:
    """Rows in an archive file as another tool (DuckDB) reads the whole file."""
    return int(duckdb.sql(f"SELECT count(*) FROM '{data}'").fetchall()[0][0])


# -- PostgreSQL --------------------------------------------------------------------------


def _pg_app(pg_url: str, count: int) -> list[Row]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE logs (id bigint PRIMARY KEY, ts timestamptz, msg text, "
            "score numeric(10, 2), meta jsonb)"
        )
        with conn.cursor().copy("COPY logs FROM STDIN") as copy:
            for i in range(1, count + 1):
                moment = NOW - timedelta(seconds=(count - i) * 60 + 30)
                copy.write_row((i, moment, _message(i), i * 1.5, json.dumps({"i": i})))
        return list(conn.execute("SELECT * FROM logs ORDER BY id"))


def test_postgres_purge_archives_and_restores(
    project: Project, pg_url: str, history: History
) -> None:
    rows = _pg_app(pg_url, 3000)
    _config(project, pg_url, "archive/{database}-{table}-{run}.jsonl.gz", "1000m")
    result = project.cli("run", "purge-logs")
    assert result.returncode == 0, result.stderr
    run = history("purge-logs")[0]
    assert run["result"]["archived"] == run["rows_affected"] == 2000
    with psycopg.connect(pg_url) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM logs ORDER BY id")] == list(
            range(2001, 3001)
        )
    archived = sorted(_archived(project.path / "archive"))
    assert [row[0] for row in archived] == list(range(1, 2001))
    assert archived[4][2] == rows[4][2] and archived[2][2] == rows[2][2]

    [archive] = (project.path / "archive").glob("*.jsonl.gz")
    restore = project.cli("restore-archive", str(archive), "--database", "app", "--table", "logs")
    assert restore.returncode == 0, restore.stderr
    with psycopg.connect(pg_url) as conn:
        assert list(conn.execute("SELECT * FROM logs ORDER BY id")) == rows
    # Restoring twice would duplicate keys: refused, and nothing is inserted.
    again = project.cli("restore-archive", str(archive), "--database", "app", "--table", "logs")
    assert again.returncode == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM logs").fetchone() == (3000,)


def test_postgres_archive_needs_a_primary_key(project: Project, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE logs (id bigint, ts timestamptz)")
        conn.execute("INSERT INTO logs VALUES (1, now() - interval '2 days')")
    _config(project, pg_url, "archive/{table}.csv.gz")
    result = project.cli("run", "purge-logs")
    assert result.returncode == 1
    assert "table 'logs' has no primary key; purge with archive needs one" in result.stdout


def test_postgres_archived_partitions_are_emptied_not_dropped(
    project: Project, pg_url: str, history: History
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE logs (id bigint, ts timestamptz NOT NULL, msg text, "
            "PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)"
        )
        for day in range(-4, 2):
            start = (NOW + timedelta(days=day)).date()
            conn.execute(
                f"CREATE TABLE logs_{day + 4} PARTITION OF logs FOR VALUES "
                f"FROM ('{start}') TO ('{start + timedelta(days=1)}')"
            )
        conn.execute(
            "INSERT INTO logs SELECT i, now() - (i || ' hours 30 minutes')::interval, 'm' || i "
            "FROM generate_series(0, 71) AS i"
        )
        # Rows older than 30 hours: ids 30 to 71, over three partitions.
    _config(project, pg_url, "archive/{table}.parquet", "30h")
    preview = project.cli("preview", "purge-logs", "--json").json()
    assert preview["drop_partitions"] == {}
    result = project.cli("run", "purge-logs")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_url) as conn:
        kept = [row[0] for row in conn.execute("SELECT id FROM logs ORDER BY id")]
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'logs'::regclass"
        ).fetchone()
    assert kept == list(range(0, 30))
    assert partitions == (6,)
    archived = _archived(project.path / "archive")
    assert sorted(row[0] for row in archived) == list(range(30, 72))
    assert history("purge-logs")[0]["result"]["archived"] == 42


# -- kill -9 at random points ----------------------------------------------------------------


def _normal(row: Row) -> Row:
    """A row as the table, a CSV archive or a JSON archive gives it, in one form."""
    row_id, moment, message, score, *rest = row
    moment = moment.isoformat() if isinstance(moment, datetime) else moment
    return (int(row_id), moment, message, float(score), *rest)


@pytest.fixture(params=["sqlite", "postgresql"])
def killed_app(
    request: pytest.FixtureRequest, project: Project
) -> Iterator[tuple[str, str, Callable[[], list[Row]], list[Row]]]:
    count = 200_000
    if request.param == "sqlite":
        rows = _sqlite_app(project, count)
        path = project.path / "app.db"
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
        yield "sqlite:///app.db", ".csv.gz", lambda: db.query(path, "SELECT * FROM logs"), rows
        return
    pg_url = request.getfixturevalue("pg_url")
    rows = _pg_app(pg_url, count)

    def table() -> list[Row]:
        with psycopg.connect(pg_url) as conn:
            return list(conn.execute("SELECT * FROM logs"))

    yield pg_url, ".jsonl.gz", table, rows


@pytest.mark.slow
def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    project: Project,
    killed_app: tuple[str, str, Callable[[], list[Row]], list[Row]],
) -> None:
    url, suffix, table, original = killed_app
    _config(project, url, f"archive/{{table}}/{{date}}{suffix}", "5m")
    manifest_folder = project.path / "archive" / "logs"
    rng = random.Random(20261123)
    kills = attempts = 0
    while kills < 20:
        attempts += 1
        assert attempts < 80, f"only {kills} runs were killed while working"
        process = project.popen("run", "purge-logs")
        if kills % 3 == 2:
            # Killed at any moment: starting, settling, archiving, deleting.
            time.sleep(rng.uniform(0.2, 0.9))
        else:
            # Killed a few milliseconds after a batch reached the manifest.
            size = _manifest_size(manifest_folder)
            deadline = time.monotonic() + 30
            while _manifest_size(manifest_folder) == size and process.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.02))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        process.communicate()
    final = project.cli("run", "purge-logs", "--json")
    assert final.returncode == 0, final.stderr

    remaining, archived = table(), _archived(project.path / "archive")
    assert len(remaining) + len(archived) == len(original)  # no row twice
    both = sorted(_normal(row) for row in remaining + archived)
    assert both == sorted(_normal(row) for row in original)
    assert len(archived) > 150_000
    assert "pending" not in _states(project.path / "archive")
    # The archive file itself holds exactly the archived rows: no torn batch inside.
    [data] = manifest_folder.glob(f"*{suffix}")
    assert _rows_in_file(data) == len(archived)
    # The kills did leave batches to settle, and later runs settled them (the manifest
    # keeps what they found).
    states = _states(project.path / "archive")
    settled = {
        "rolled back": states.count("discarded"),
        "committed": sum(
            "settled after" in line
            for m in manifest_folder.glob("*.manifest.jsonl")
            for line in m.read_text().splitlines()
        ),
    }
    print(f"{kills} kills in {attempts} runs; interrupted batches settled: {settled}")
    assert sum(settled.values()) > 0
    assert "suspect" not in states


def _manifest_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.manifest.jsonl"))
