"""vacuum, optimize and health on real SQLite files, through the CLI."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import sqlite_data as db
from tests.conftest import Project


def _bloated(path: Path, auto_vacuum: str = "NONE") -> None:
    """A file with ~8 MB of rows of which three quarters are deleted."""
    db.create(
        path,
        f"""
        PRAGMA auto_vacuum = {auto_vacuum};
        CREATE TABLE blobs (id INTEGER PRIMARY KEY, body TEXT);
        CREATE INDEX blobs_body ON blobs (substr(body, 1, 8));
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8000)
        INSERT INTO blobs SELECT i, hex(randomblob(500)) FROM n;
        DELETE FROM blobs WHERE id % 4 != 0;
        """,
    )


def _config(project: Project, jobs: str) -> None:
    project.write_config(f'[databases.app]\nurl = "sqlite:///app.db"\n{jobs}')


@pytest.mark.parametrize(
    ("auto_vacuum", "mode"), [("NONE", "full"), ("INCREMENTAL", "incremental")]
)
def test_vacuum_gives_space_back_and_reports_it(
    project: Project, auto_vacuum: str, mode: str
) -> None:
    path = project.path / "app.db"
    _bloated(path, auto_vacuum)
    _config(project, '[jobs.vacuum]\ntask = "vacuum"\ndatabase = "app"\n')
    size_before = path.stat().st_size
    preview = project.cli("preview", "vacuum", "--json").json()
    assert preview["reclaimable_bytes"] > size_before / 2
    assert path.stat().st_size == size_before

    (run,) = project.cli("run", "vacuum", "--json").json()
    assert run["status"] == "succeeded"
    result = run["result"]
    size_after = path.stat().st_size
    assert result["mode"] == mode
    assert result["size_before"] == size_before
    assert result["size_after"] == size_after
    assert result["bytes_saved"] == size_before - size_after
    assert result["percent_saved"] == round(100 * (size_before - size_after) / size_before, 2)
    assert size_after < size_before * 0.5
    assert result["freelist_after"] == 0
    assert db.query(path, "SELECT count(*) FROM blobs") == [(2000,)]
    assert db.query(path, "PRAGMA integrity_check") == [("ok",)]


def test_optimize_refreshes_statistics_and_can_reindex(project: Project) -> None:
    path = project.path / "app.db"
    _bloated(path)
    _config(
        project,
        '[jobs.optimize]\ntask = "optimize"\ndatabase = "app"\nmode = "analyze"\nreindex = true\n',
    )
    assert db.query(path, "SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'") == []
    (run,) = project.cli("run", "optimize", "--json").json()
    assert run["status"] == "succeeded"
    assert run["result"]["statements"] == ["ANALYZE", "REINDEX"]
    stats = db.query(path, "SELECT tbl, idx FROM sqlite_stat1 ORDER BY idx")
    assert ("blobs", "blobs_body") in stats


HEALTH = """
[jobs.health]
task = "health"
database = "app"
integrity = "{integrity}"
warn_size = "{warn}"
critical_size = "{critical}"
warn_freelist_percent = 50
"""


def _health(project: Project, **values: str) -> dict[str, object]:
    settings = {"integrity": "quick", "warn": "100MB", "critical": "1GB", **values}
    _config(project, HEALTH.format(**settings))
    run = project.cli("run", "health", "--json")
    report: dict[str, object] = run.json()[0]["result"]
    return report


def test_health_reports_integrity_sizes_pages_and_tables(project: Project) -> None:
    path = project.path / "app.db"
    _bloated(path)
    report = _health(project, integrity="full")
    size = path.stat().st_size
    assert report["integrity"] == ["ok"]
    assert report["file_bytes"] == size
    assert report["page_size"] == 4096
    assert report["page_count"] == size // 4096
    assert report["freelist_percent"] > 50
    assert report["tables"] == [
        {"table": "blobs", "rows": 2000, "bytes": report["tables"][0]["bytes"]}
    ]  # type: ignore[index]
    assert report["status"] == "warning"
    assert any("of pages are free" in problem for problem in report["problems"])  # type: ignore[attr-defined]


def test_health_thresholds_are_exact_at_the_boundary(project: Project) -> None:
    path = project.path / "app.db"
    db.create(path, "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    size = path.stat().st_size
    assert _health(project, warn=str(size + 1), critical=str(size + 2))["status"] == "ok"
    assert _health(project, warn=str(size), critical=str(size + 1))["status"] == "warning"
    critical = _health(project, warn=str(size - 1), critical=str(size))
    assert critical["status"] == "critical"
    assert critical["problems"] == [f"size {size / 1000:.1f} kB >= {size / 1000:.1f} kB"]


def test_a_corrupted_file_is_critical(project: Project) -> None:
    path = project.path / "app.db"
    _bloated(path)
    with sqlite3.connect(path) as conn:
        conn.execute("VACUUM")
    conn.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 3, 4096 * 6):  # pages 4-6: table and index b-tree pages
        data[offset] = 0x55
    path.write_bytes(bytes(data))
    _config(project, HEALTH.format(integrity="full", warn="1GB", critical="2GB"))
    result = project.cli("run", "health", "--json")
    (run,) = result.json()
    if run["status"] == "succeeded":
        assert run["result"]["status"] == "critical"
        assert run["result"]["problems"][0].startswith("integrity check failed")
    else:
        assert run["status"] == "failed"
        assert "malformed" in run["error"] or "corrupt" in run["error"]
    assert result.returncode in (0, 1)


def test_health_reports_are_kept_and_show_growth(project: Project) -> None:
    path = project.path / "app.db"
    db.create(path, "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    _health(project)
    # Pretend the first report was taken two days ago, 2 MB smaller.
    size = path.stat().st_size
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).replace(tzinfo=None).isoformat(" ")
    with sqlite3.connect(project.state) as conn:
        conn.execute(
            "UPDATE dbkeeper_health SET taken_at = ?, size_bytes = ?",
            (two_days_ago, size - 2_000_000),
        )
    conn.close()
    report = _health(project, critical="10MB")
    assert report["growth_bytes_per_day"] == pytest.approx(1_000_000, rel=0.01)
    assert report["days_until_critical_size"] == pytest.approx((10_000_000 - size) / 1e6, abs=0.2)
    assert report["status"] == "warning"
    shown = project.cli("health", "--json").json()
    assert shown["app"]["growth_bytes_per_day"] == report["growth_bytes_per_day"]
    text = project.cli("health").stdout
    assert "1.0 MB/day" in text, text
