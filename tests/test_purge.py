"""purge on SQLite: exact boundaries on every time form, previews, filters, the guard,
a concurrent writer that must not starve, and a kill -9 in the middle."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests import sqlite_data as db
from tests.conftest import Project

MINUTE = timedelta(minutes=10)
RETENTION = timedelta(days=30)


def _iso(moment: datetime, form: str) -> object:
    utc = moment.astimezone(UTC)
    match form:
        case "current_timestamp":
            return utc.strftime("%Y-%m-%d %H:%M:%S")
        case "iso_t":
            return utc.strftime("%Y-%m-%dT%H:%M:%S")
        case "iso_fraction":
            return utc.strftime("%Y-%m-%dT%H:%M:%S.%f")
        case "iso_z":
            return utc.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        case "iso_offset":
            # Local text with an offset: row times far from UTC in either direction.
            zone = timezone(timedelta(hours=-5 if moment.minute % 2 else 9))
            return moment.astimezone(zone).isoformat()
        case "unix_s":
            return int(utc.timestamp())
        case "unix_s_real":
            return utc.timestamp()
        case "unix_ms":
            return int(utc.timestamp() * 1000)
    raise AssertionError(form)


FORMS = {
    "current_timestamp": "iso",
    "iso_t": "iso",
    "iso_fraction": "iso",
    "iso_z": "iso",
    "iso_offset": "iso",
    "unix_s": "unix_s",
    "unix_s_real": "unix_s",
    "unix_ms": "unix_ms",
}


def _boundary_rows(now: datetime) -> dict[int, datetime | None]:
    """Row id -> time: far older, just older, just newer, now, and a NULL."""
    cutoff = now - RETENTION
    return {
        1: cutoff - timedelta(days=400),
        2: cutoff - timedelta(days=1, minutes=1),
        3: cutoff - MINUTE - timedelta(minutes=1),  # odd minute: -05:00 text looks older
        4: cutoff - MINUTE,  # even minute: +09:00 text looks newer than it is
        5: cutoff + MINUTE,
        6: cutoff + MINUTE + timedelta(minutes=1),
        7: cutoff + timedelta(days=1),
        8: now,
        9: None,
    }


OLD_IDS = [1, 2, 3, 4]
KEPT_IDS = [5, 6, 7, 8, 9]


INDEXED = pytest.mark.parametrize("indexed", [False, True], ids=["by-key", "by-time-index"])


@INDEXED
def test_purge_is_exact_on_every_time_form(
    project: Project, history: Callable[..., list[dict[str, Any]]], indexed: bool
) -> None:
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    path = project.path / "app.db"
    ddl, jobs = [], []
    for form, declared in FORMS.items():
        for mode in ("auto", declared):
            table = f"{form}_{mode}"
            column_type = "TEXT" if declared == "iso" else "INTEGER"
            ddl.append(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, ts {column_type});")
            if indexed:
                ddl.append(f"CREATE INDEX {table}_ts ON {table} (ts);")
            jobs.append(
                f"""
                [jobs.{table}]
                task = "purge"
                database = "app"
                table = "{table}"
                column = "ts"
                older_than = "30d"
                column_format = "{mode}"
                """
            )
    db.create(path, "\n".join(ddl))
    conn = sqlite3.connect(path)
    for form in FORMS:
        rows = [
            (row_id, None if moment is None else _iso(moment, form))
            for row_id, moment in _boundary_rows(now).items()
        ]
        for mode in ("auto", FORMS[form]):
            conn.executemany(f"INSERT INTO {form}_{mode} VALUES (?, ?)", rows)
    conn.commit()
    conn.close()
    project.write_config('[databases.app]\nurl = "sqlite:///app.db"\n' + "".join(jobs))

    before = db.digest(path)
    previews = {}
    for form, declared in FORMS.items():
        for mode in ("auto", declared):
            job = f"{form}_{mode}"
            result = project.cli("preview", job, "--json")
            assert result.returncode == 0, (job, result.stderr)
            previews[job] = result.json()
            assert previews[job]["rows"] == len(OLD_IDS), (job, previews[job])
            assert previews[job]["format"] == declared, job
    assert db.digest(path) == before, "preview changed the database"

    result = project.cli("run", "--all", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    for run in result.json():
        assert run["status"] == "succeeded", run
        assert run["rows_affected"] == run["result"]["planned"] == len(OLD_IDS), run
        assert db.ids(path, run["job"]) == KEPT_IDS, run["job"]
    assert {run["job"]: run["rows_affected"] for run in history()} == {
        job: previews[job]["rows"] for job in previews
    }


def test_preview_shows_oldest_newest_and_samples_then_run_deletes_that_many(
    project: Project,
) -> None:
    now = datetime.now(UTC) + timedelta(minutes=30)
    path = db.create(
        project.path / "app.db",
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, created TEXT, message TEXT);",
        [(i, (now - timedelta(hours=i)).isoformat(), f"line {i}") for i in range(1, 101)],
        "INSERT INTO logs VALUES (?, ?, ?)",
    )
    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.trim]
        task = "purge"
        database = "app"
        table = "logs"
        column = "created"
        older_than = "48h"
        sample_rows = 3
        """
    )
    preview = project.cli("preview", "trim", "--json").json()
    # Rows 48.5 to 99.5 hours old go; the row 47.5 hours old stays.
    assert preview["rows"] == 52
    assert preview["table_rows"] == 100
    assert preview["oldest"].startswith((now - timedelta(hours=100)).strftime("%Y-%m-%dT%H:%M"))
    assert preview["newest"].startswith((now - timedelta(hours=49)).strftime("%Y-%m-%dT%H:%M"))
    assert [sample["id"] for sample in preview["samples"]] == [49, 50, 51]
    shown = project.cli("preview", "trim")
    assert shown.returncode == 0
    assert "52" in shown.stdout and "line 49" in shown.stdout

    run = project.cli("run", "trim", "--json").json()[0]
    assert run["rows_affected"] == 52
    assert db.ids(path, "logs") == list(range(1, 49))


@INDEXED
def test_rows_out_of_key_order_and_values_that_are_not_times(
    project: Project, indexed: bool
) -> None:
    """The walk covers every row whatever order the times are in: the oldest rows have
    the highest keys, old and new alternate, times next to the cutoff carry zone offsets
    (decided by julianday(), not their text), thousands of rows share one time (more than
    a first window holds: a window never ends inside them), and numbers, blobs, text that
    is not a time and NULLs are kept."""
    now = datetime.now(UTC).replace(microsecond=0)
    cutoff = now - RETENTION
    rows: list[tuple[int, object]] = []
    old: set[int] = set()
    for key in range(1, 401):
        moment = now - timedelta(days=(key * 37) % 61, hours=key % 24)
        if key % 5 == 0:  # within a day of the cutoff, as local text of far-off zones
            moment = cutoff + timedelta(minutes=2 * (key % 25) - 25, hours=(key % 3 - 1) * 10)
            zone = timezone(timedelta(hours=12 if key % 2 else -11))
            rows.append((key, moment.astimezone(zone).isoformat()))
        else:
            rows.append((key, moment.strftime("%Y-%m-%d %H:%M:%S")))
        if moment < cutoff:
            old.add(key)
    rows += [(1000, (now - timedelta(days=900)).isoformat()), (1001, 5), (1002, b"\x00")]
    rows += [(1003, "not a time"), (1004, None)]
    old.add(1000)
    for key, moment in ((2000, cutoff - timedelta(days=5)), (5000, cutoff + timedelta(days=1))):
        rows += [(key + n, moment.strftime("%Y-%m-%d %H:%M:%S")) for n in range(2500)]
    old.update(range(2000, 4500))
    path = db.create(
        project.path / "app.db",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts);"
        + ("CREATE INDEX events_ts ON events (ts);" if indexed else ""),
        rows,
        "INSERT INTO events VALUES (?, ?)",
    )
    project.write_config(
        """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.trim]
        task = "purge"
        database = "app"
        table = "events"
        column = "ts"
        older_than = "30d"
        column_format = "iso"
        """
    )
    assert project.cli("preview", "trim", "--json").json()["rows"] == len(old)
    run = project.cli("run", "trim", "--json").json()[0]
    assert run["status"] == "succeeded", run
    assert run["rows_affected"] == len(old)
    assert db.ids(path, "events") == sorted({key for key, _ in rows} - old)


@INDEXED
def test_where_filters_are_bound_values_on_checked_columns(project: Project, indexed: bool) -> None:
    old = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%d %H:%M:%S")
    new = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    rows = [
        (1, old, "done"),
        (2, old, "failed"),
        (3, new, "done"),
        (4, old, "x' OR '1'='1"),
        (5, old, None),
        (6, old, "done"),
    ]
    path = db.create(
        project.path / "app.db",
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, finished TEXT, status TEXT);"
        + ("CREATE INDEX tasks_finished ON tasks (finished);" if indexed else ""),
        rows,
        "INSERT INTO tasks VALUES (?, ?, ?)",
    )
    config = """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.done]
        task = "purge"
        database = "app"
        table = "tasks"
        column = "finished"
        older_than = "1d"
        where = {{ {where} }}
    """
    project.write_config(config.format(where='status = "done"'))
    assert project.cli("preview", "done", "--json").json()["rows"] == 2
    assert project.cli("run", "done").returncode == 0
    assert db.ids(path, "tasks") == [2, 3, 4, 5]

    project.write_config(config.format(where="""status = "x' OR '1'='1" """))
    assert project.cli("run", "done").returncode == 0
    assert db.ids(path, "tasks") == [2, 3, 5]

    before = db.digest(path)
    project.write_config(config.format(where='state = "done"'))
    for command in (("check",), ("preview", "done"), ("run", "done")):
        refused = project.cli(*command)
        assert refused.returncode == 1, command
        said = refused.stdout + refused.stderr
        assert "table 'tasks' in database 'app' has no column 'state'" in said, said
        assert "Traceback" not in said
    assert db.digest(path) == before


def test_guard_refuses_to_delete_every_row_unless_allowed(
    project: Project, history: Callable[..., list[dict[str, Any]]]
) -> None:
    # Milliseconds read as seconds would put every row 50 000 years ahead; the reverse
    # mistake (a unit too small) makes every row look ancient. The guard catches it.
    rows = [(i, (datetime.now(UTC) - timedelta(minutes=i)).timestamp()) for i in range(1, 51)]
    path = db.create(
        project.path / "app.db",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL);",
        rows,
        "INSERT INTO events VALUES (?, ?)",
    )
    config = """
        [databases.app]
        url = "sqlite:///app.db"

        [jobs.events]
        task = "purge"
        database = "app"
        table = "events"
        column = "at"
        older_than = "1s"
        column_format = "unix_ms"
        {extra}
    """
    project.write_config(config.format(extra=""))
    before = db.digest(path)
    preview = project.cli("preview", "events", "--json").json()
    assert preview["rows"] == 50 and preview["would_refuse"]
    refused = project.cli("run", "events")
    assert refused.returncode == 1
    assert "would delete all 50 rows" in refused.stderr + refused.stdout
    assert "allow_all" in refused.stderr + refused.stdout
    assert db.digest(path) == before
    (run,) = history("events")
    assert run["status"] == "failed" and "allow_all" in run["error"]

    project.write_config(config.format(extra="allow_all = true"))
    assert project.cli("run", "events").returncode == 0
    assert db.ids(path, "events") == []


WRITER = """
import sqlite3, sys, time, json
path, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
conn = sqlite3.connect(path, timeout=30, isolation_level=None)
waits, ids = [], []
import os
while not os.path.exists(stop):
    began = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")
    cursor = conn.execute(
        "INSERT INTO logs (ts, message) VALUES (strftime('%Y-%m-%d %H:%M:%f', 'now'), 'live')"
    )
    conn.execute("COMMIT")
    waits.append(time.monotonic() - began)
    ids.append(cursor.lastrowid)
    time.sleep(0.005)
json.dump({"waits": waits, "ids": ids}, open(out, "w"))
"""


def _big_log_table(path: Path, rows: int, old_fraction: float) -> int:
    """``rows`` log lines, the first ``old_fraction`` of them 60 days old; returns old count."""
    old = int(rows * old_fraction)
    db.create(
        path,
        f"""
        PRAGMA journal_mode = WAL;
        CREATE TABLE logs (id INTEGER PRIMARY KEY, ts TEXT, message TEXT);
        CREATE INDEX logs_ts ON logs (ts);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
        INSERT INTO logs (id, ts, message)
        SELECT i,
               CASE WHEN i <= {old}
                    THEN strftime('%Y-%m-%d %H:%M:%S', 'now', '-60 days', (i % 86400) || ' seconds')
                    ELSE strftime('%Y-%m-%d %H:%M:%S', 'now', '-1 days', (i % 3600) || ' seconds')
               END,
               'request ' || i || ' handled'
        FROM n;
        """,
    )
    return old


PURGE_LOGS = """
    [databases.app]
    url = "sqlite:///app.db"

    [jobs.purge-logs]
    task = "purge"
    database = "app"
    table = "logs"
    column = "ts"
    older_than = "30d"
"""


@pytest.mark.slow
def test_concurrent_writer_is_not_starved_by_a_million_row_purge(project: Project) -> None:
    path = project.path / "app.db"
    old = _big_log_table(path, 1_200_000, 0.85)
    project.write_config(PURGE_LOGS)
    out, stop = project.path / "writer.json", project.path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(out), str(stop)])
    try:
        time.sleep(0.5)
        started = time.monotonic()
        result = project.cli("run", "purge-logs", "--json")
        took = time.monotonic() - started
        time.sleep(0.3)
    finally:
        stop.touch()
        writer.wait(60)
    assert result.returncode == 0, result.stderr
    run = result.json()[0]
    # Counted on a second connection while the first deleted, as the rows were before.
    assert run["rows_affected"] == run["result"]["planned"] == old
    written = __import__("json").loads(out.read_text())
    waits, writer_ids = written["waits"], written["ids"]
    worst = max(waits)
    print(
        f"\npurge of {old} rows took {took:.2f}s; writer committed {len(waits)} times, "
        f"worst wait {worst * 1000:.1f} ms, median {sorted(waits)[len(waits) // 2] * 1000:.2f} ms"
    )
    assert len(waits) > 50, "the writer kept committing during the purge"
    assert worst < 0.5
    remaining = db.query(path, "SELECT count(*), min(id) FROM logs")[0]
    assert remaining == (1_200_000 - old + len(writer_ids), old + 1)
    assert db.query(path, "SELECT count(*) FROM logs WHERE message = 'live'")[0][0] == len(
        writer_ids
    )


@pytest.mark.slow
def test_kill_9_mid_purge_loses_nothing_and_a_rerun_finishes(
    project: Project, history: Callable[..., list[dict[str, Any]]]
) -> None:
    path = project.path / "app.db"
    total = 1_000_000
    old = _big_log_table(path, total, 0.9)
    project.write_config(PURGE_LOGS)
    newest_before = db.query(path, f"SELECT count(*) FROM logs WHERE id > {old}")[0][0]
    process = project.popen("run", "purge-logs")
    watcher = sqlite3.connect(path, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        (count,) = watcher.execute("SELECT count(*) FROM logs").fetchone()
        if total - count >= 50_000:
            break
        assert process.poll() is None, "the purge finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=10)
    watcher.close()

    assert db.query(path, "PRAGMA integrity_check") == [("ok",)]
    (left,) = db.query(path, "SELECT count(*) FROM logs")[0]
    assert total - old <= left < total - 50_000 + 1
    assert db.query(path, f"SELECT count(*) FROM logs WHERE id > {old}")[0][0] == newest_before
    (killed,) = history("purge-logs")
    assert killed["status"] == "running"

    # The next run sees that the killed process is gone (same host, no such pid),
    # records its run as abandoned without waiting for the lease, and finishes.
    rerun = project.cli("run", "purge-logs", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.json()[0]["rows_affected"] == left - (total - old)
    assert db.query(path, "SELECT count(*), min(id) FROM logs")[0] == (total - old, old + 1)
    assert [(run["id"], run["status"]) for run in history("purge-logs")] == [
        (rerun.json()[0]["id"], "succeeded"),
        (killed["id"], "abandoned"),
    ]
