"""export: content equal to the table, previous versions kept, memory flat, on SQLite
and PostgreSQL; bad queries refused without touching the file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from tests import sqlite_data as db
from tests.conftest import DBKEEPER, Project

History = Callable[..., list[dict[str, Any]]]


def _digest(rows: Iterable[Iterable[Any]]) -> str:
    hasher = hashlib.sha256()
    for row in rows:
        hasher.update("\x1f".join("\\N" if v is None else str(v) for v in row).encode())
        hasher.update(b"\x1e")
    return hasher.hexdigest()


def _big_sqlite(path: Path, rows: int) -> None:
    db.create(
        path,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);"
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < "
        f"{rows}) INSERT INTO items SELECT i, 'item, \"' || i || '\"', i % 97 FROM n;",
    )


def _peak_rss_mb(project: Project, *args: str) -> float:
    """Peak resident memory of one `dbkeeper` process, in MB."""
    probe = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True); "
        "assert done.returncode == 0, done.stderr; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe, str(DBKEEPER), *args],
        cwd=project.path,
        env=project.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(output.stdout)


@pytest.mark.slow
def test_sqlite_export_of_a_million_rows_is_exact_versioned_and_memory_flat(
    project: Project, history: History
) -> None:
    _big_sqlite(project.path / "small.db", 100_000)
    _big_sqlite(project.path / "app.db", 1_000_000)
    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [databases.small]
        url = "sqlite:///small.db"

        [jobs.items-csv]
        task = "export"
        database = "app"
        table = "items"
        path = "exports/items.csv.gz"
        keep = 1

        [jobs.small-csv]
        task = "export"
        database = "small"
        table = "items"
        path = "exports/small.csv.gz"
        """
    )
    small = _peak_rss_mb(project, "run", "small-csv")
    big = _peak_rss_mb(project, "run", "items-csv")
    print(f"peak RSS: {small:.0f} MB at 100k rows, {big:.0f} MB at 1M rows")
    assert big < small * 1.25 + 20, "memory grows with the table"

    out = project.path / "exports" / "items.csv.gz"
    with gzip.open(out, "rt", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["id", "name", "qty"]
        exported = _digest(reader)
    table = db.query(project.path / "app.db", "SELECT id, name, qty FROM items ORDER BY id")
    assert exported == _digest(table)
    run = history("items-csv")[0]
    assert run["result"]["rows"] == run["result"]["rows_in_database"] == 1_000_000

    # A second export keeps the first as a timestamped version; a third prunes to keep = 1.
    first = out.read_bytes()
    db.create(project.path / "app.db", "DELETE FROM items WHERE id > 10")
    for _ in range(2):
        assert project.cli("run", "items-csv").returncode == 0
    versions = sorted((project.path / "exports").glob("items.*.csv.gz"))
    assert len(versions) == 1
    assert gzip.decompress(versions[0].read_bytes()).count(b"\n") == 11
    assert history("items-csv")[1]["result"]["previous"] is not None
    assert first != out.read_bytes()


def test_export_query_to_parquet_keeps_types_and_nulls(project: Project) -> None:
    db.create(
        project.path / "app.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, price REAL);"
        "INSERT INTO t VALUES (1, 'a', 1.5), (2, NULL, 2.25), (3, '', NULL);",
    )
    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.cheap]
        task = "export"
        database = "app"
        query = "SELECT id, name, price FROM t WHERE id >= 2 ORDER BY id"
        path = "out/cheap.parquet"
        """
    )
    assert project.cli("run", "cheap").returncode == 0
    table = pq.read_table(project.path / "out" / "cheap.parquet")
    assert table.to_pylist() == [
        {"id": 2, "name": None, "price": 2.25},
        {"id": 3, "name": "", "price": None},
    ]


def test_sqlite_columns_whose_values_change_type_after_the_first_batch_are_exported(
    project: Project, history: History
) -> None:
    # The driver types each column from its first 16,384 values. After them: the first
    # text in a column NULL until then, a real among integers, a blob among integers.
    rows = [(i, None, i, i) for i in range(1, 20_001)]
    rows += [(20_001, None, None, "text"), (20_002, "late", 2.5, b"\x00\xff")]
    db.create(
        project.path / "app.db",
        "CREATE TABLE m (id INTEGER PRIMARY KEY, note TEXT, amount NUMERIC, payload)",
        rows,
        "INSERT INTO m VALUES (?, ?, ?, ?)",
    )
    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.table]
        task = "export"
        database = "app"
        table = "m"
        path = "out/m.parquet"

        [jobs.ordered]
        task = "export"
        database = "app"
        query = "SELECT id, note AS \\"the note\\" FROM m ORDER BY id % 2 DESC, id"
        path = "out/ordered.csv"
        """
    )
    assert project.cli("run", "table").returncode == 0
    table = pq.read_table(project.path / "out" / "m.parquet")
    assert [str(t) for t in table.schema.types] == ["int64", "string", "double", "binary"]
    assert table.num_rows == 20_002
    assert table.slice(0, 2).to_pylist() == [
        {"id": 1, "note": None, "amount": 1.0, "payload": b"1"},
        {"id": 2, "note": None, "amount": 2.0, "payload": b"2"},
    ]
    assert table.slice(19_999).to_pylist() == [
        {"id": 20_000, "note": None, "amount": 20_000.0, "payload": b"20000"},
        {"id": 20_001, "note": None, "amount": None, "payload": b"text"},
        {"id": 20_002, "note": "late", "amount": 2.5, "payload": b"\x00\xff"},
    ]
    run = history("table")[0]
    assert run["result"]["typed"] is True
    assert run["result"]["rows"] == run["result"]["rows_in_database"] == 20_002

    assert project.cli("run", "ordered").returncode == 0
    with open(project.path / "out" / "ordered.csv", newline="") as handle:
        exported = list(csv.reader(handle))
    ids = sorted(range(1, 20_003), key=lambda i: (-(i % 2), i))
    assert exported == [["id", "the note"]] + [[str(i), "late" if i == 20_002 else ""] for i in ids]
    assert history("ordered")[0]["result"]["typed"] is True


def test_export_refuses_a_bad_query_and_keeps_the_old_file(
    project: Project, history: History
) -> None:
    db.create(project.path / "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    (project.path / "out").mkdir()
    (project.path / "out" / "t.csv").write_text("old\n")
    bad = """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.bad]
        task = "export"
        database = "app"
        query = "SELECT nope FROM t"
        path = "out/t.csv"
        """
    project.write_config(
        bad
        + """
        [jobs.two]
        task = "export"
        database = "app"
        query = "DELETE FROM t"
        path = "out/t.csv"
        """
    )
    check = project.cli("check")
    assert check.returncode == 1
    assert "job 'two': 'query' must be one SELECT" in check.stderr
    project.write_config(bad)
    assert project.cli("run", "bad").returncode == 1
    assert history("bad")[0]["error"] == "query: no such column: nope"
    assert (project.path / "out" / "t.csv").read_text() == "old\n"
    assert sorted(p.name for p in (project.path / "out").iterdir()) == ["t.csv"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_postgres_export_equals_the_table(
    project: Project, pg_url: str, suffix: str, history: History
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
        conn.execute(
            "INSERT INTO items SELECT i, CASE WHEN i % 10 = 0 THEN NULL "
            "ELSE 'item, \"' || i || E'\"\\nline' END, i % 97 FROM generate_series(1, 50000) i"
        )
        table = list(conn.execute("SELECT id, name, qty FROM items ORDER BY id"))
    project.write_config(
        f"""
        [databases.app]
        url = "{pg_url}"

        [jobs.items]
        task = "export"
        database = "app"
        table = "items"
        path = "exports/items{suffix}"
        """
    )
    result = project.cli("run", "items")
    assert result.returncode == 0, result.stderr
    out = project.path / "exports" / f"items{suffix}"
    if suffix == ".parquet":
        rows = [tuple(row.values()) for row in pq.read_table(out).to_pylist()]
    else:
        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(out, "rt", newline="") as handle:  # type: ignore[operator]
            reader = csv.reader(handle)
            assert next(reader) == ["id", "name", "qty"]
            rows = [(int(i), name or None, int(qty)) for i, name, qty in reader]
    assert _digest(sorted(rows)) == _digest(table)
    assert history("items")[0]["result"]["rows_in_database"] == 50_000


@pytest.mark.parametrize(
    ("source", "error"),
    [
        # fails mid-COPY, at row 90,000
        (
            'query = "SELECT id, 1 / (id - 90000) AS ratio FROM items ORDER BY id"',
            "division by zero",
        ),
        # COPY looks the table up itself; a missing one gets the error check gives
        ('table = "item"', "database 'app' has no table 'item' (tables: items)"),
    ],
    ids=["mid-copy", "missing-table"],
)
def test_postgres_export_that_fails_keeps_the_old_file(
    project: Project, pg_url: str, history: History, source: str, error: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute("INSERT INTO items SELECT i FROM generate_series(1, 100000) i")
    (project.path / "out").mkdir()
    (project.path / "out" / "items.csv").write_text("old\n")
    project.write_config(
        f"""
        [databases.app]
        url = "{pg_url}"

        [jobs.items]
        task = "export"
        database = "app"
        {source}
        path = "out/items.csv"
        """
    )
    result = project.cli("run", "items")
    assert result.returncode == 1
    assert error in history("items")[0]["error"]
    assert (project.path / "out" / "items.csv").read_text() == "old\n"
    assert sorted(p.name for p in (project.path / "out").iterdir()) == ["items.csv"]
