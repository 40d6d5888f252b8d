"""What only PostgreSQL has: its time types, declarative partitions, and an application
working on the same table while a purge runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.conftest import Project

History = Callable[..., list[dict[str, Any]]]
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")


def _ids(conn: psycopg.Connection[Any], table: str) -> list[int]:
    return [row[0] for row in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def _purge_job(name: str, table: str, column: str, older_than: str, extra: str = "") -> str:
    return f"""
        [jobs.{name}]
        task = "purge"
        database = "app"
        table = "{table}"
        column = "{column}"
        older_than = "{older_than}"
        {extra}
    """


def _write(project: Project, pg_url: str, jobs: str) -> None:
    project.write_config(f'[databases.app]\nurl = "{pg_url}"\n{jobs}')


def test_every_time_type_is_purged_exactly_at_the_cutoff(
    project: Project, pg_url: str, history: History
) -> None:
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=30)
    # ids 1 and 2 are older than the cutoff, 3 and 4 younger, 5 has no time.
    moments = {
        1: cutoff - timedelta(days=30),
        2: cutoff - timedelta(minutes=10),
        3: cutoff + timedelta(minutes=10),
        4: now,
        5: None,
    }

    def local(moment: datetime | None, zone: ZoneInfo = UTC_ZONE) -> datetime | None:
        return None if moment is None else moment.astimezone(zone).replace(tzinfo=None)

    def epoch(moment: datetime | None, scale: int) -> int | None:
        return None if moment is None else int(moment.timestamp() * scale)

    tables: dict[str, tuple[str, Callable[[datetime | None], object], str]] = {
        "tz": ("timestamptz", lambda m: m, ""),
        "naive_utc": ("timestamp", local, ""),
        "naive_ny": (
            "timestamp(3)",
            lambda m: local(m, NEW_YORK),
            'column_timezone = "America/New_York"',
        ),
        "unix_s": ("bigint", lambda m: epoch(m, 1), ""),
        "unix_ms": ("bigint", lambda m: epoch(m, 1000), ""),
        "unix_s_declared": ("integer", lambda m: epoch(m, 1), 'column_format = "unix_s"'),
    }
    jobs = []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table, (sql_type, convert, extra) in tables.items():
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, ts {sql_type})")
            for row_id, moment in moments.items():
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (row_id, convert(moment)))
            jobs.append(_purge_job(table, table, "ts", "30d", extra))
        # A date holds a whole day: only days that ended before the cutoff go.
        cutoff_day = cutoff.date()
        days = {
            1: cutoff_day - timedelta(days=30),
            2: cutoff_day - timedelta(days=1),
            3: cutoff_day,
            4: cutoff_day + timedelta(days=1),
            5: None,
        }
        conn.execute("CREATE TABLE days (id int PRIMARY KEY, ts date)")
        for row_id, day in days.items():
            conn.execute("INSERT INTO days VALUES (%s, %s)", (row_id, day))
        jobs.append(_purge_job("days", "days", "ts", "30d"))
    _write(project, pg_url, "".join(jobs))

    expected_format = {
        "tz": "timestamptz",
        "naive_utc": "timestamp",
        "naive_ny": "timestamp",
        "unix_s": "unix_s",
        "unix_ms": "unix_ms",
        "unix_s_declared": "unix_s",
        "days": "date",
    }
    for job, kind in expected_format.items():
        preview = project.cli("preview", job, "--json")
        assert preview.returncode == 0, preview.stderr
        assert (preview.json()["rows"], preview.json()["format"]) == (2, kind), job

    result = project.cli("run", "--all", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {run["job"]: run["rows_affected"] for run in result.json()} == dict.fromkeys(
        expected_format, 2
    )
    with psycopg.connect(pg_url) as conn:
        for table in expected_format:
            assert _ids(conn, table) == [3, 4, 5], table
    assert {run["status"] for run in history()} == {"succeeded"}


def _day(moment: date) -> str:
    return moment.isoformat()


def test_partitions_before_the_cutoff_are_dropped_and_only_the_straddling_one_purged(
    project: Project, pg_url: str, history: History
) -> None:
    today = datetime.now(UTC).date()
    cutoff = datetime.now(UTC) - timedelta(days=30)
    bounds = {
        "logs_a": (today - timedelta(days=120), today - timedelta(days=90)),
        "logs_b": (today - timedelta(days=90), today - timedelta(days=60)),
        "logs_c": (today - timedelta(days=60), today - timedelta(days=20)),  # straddles
        "logs_d": (today - timedelta(days=20), today + timedelta(days=30)),
    }
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE logs (id bigint NOT NULL, created_at timestamptz NOT NULL, msg text)"
            " PARTITION BY RANGE (created_at)"
        )
        for name, (low, high) in bounds.items():
            conn.execute(
                f"CREATE TABLE {name} PARTITION OF logs "
                f"FOR VALUES FROM ('{_day(low)} 00:00+00') TO ('{_day(high)} 00:00+00')"
            )
        conn.execute(
            "INSERT INTO logs SELECT g, %s::timestamptz + (g %% 29) * interval '1 day', 'old a' "
            "FROM generate_series(1, 3000) g",
            (bounds["logs_a"][0].isoformat(),),
        )
        conn.execute(
            "INSERT INTO logs SELECT g, %s::timestamptz + (g %% 29) * interval '1 day', 'old b' "
            "FROM generate_series(3001, 5000) g",
            (bounds["logs_b"][0].isoformat(),),
        )
        # In the straddling partition: 700 rows just older than the cutoff, 300 just younger.
        conn.execute(
            "INSERT INTO logs SELECT g, %s - g * interval '1 second', 'c old' "
            "FROM generate_series(5001, 5700) g",
            (cutoff - timedelta(minutes=10),),
        )
        conn.execute(
            "INSERT INTO logs SELECT g, %s + (g - 5700) * interval '1 second', 'c young' "
            "FROM generate_series(5701, 6000) g",
            (cutoff + timedelta(minutes=10),),
        )
        conn.execute(
            "INSERT INTO logs SELECT g, now() - (g % 10) * interval '1 day', 'new' "
            "FROM generate_series(6001, 6500) g"
        )
        conn.execute("ANALYZE logs")
    _write(project, pg_url, _purge_job("purge-logs", "logs", "created_at", "30d"))

    preview = project.cli("preview", "purge-logs", "--json")
    assert preview.returncode == 0, preview.stderr
    assert preview.json()["drop_partitions"] == {"logs_a": 3000, "logs_b": 2000}
    assert preview.json()["rows"] == 5700

    result = project.cli("run", "purge-logs", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = result.json()
    assert run["rows_affected"] == 5700
    assert run["result"]["partitions_dropped"] == ["logs_a", "logs_b"]
    with psycopg.connect(pg_url) as conn:
        partitions = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'logs'::regclass ORDER BY 1"
        ).fetchall()
        assert partitions == [("logs_c",), ("logs_d",)]
        assert conn.execute("SELECT to_regclass('logs_a'), to_regclass('logs_b')").fetchone() == (
            None,
            None,
        )
        assert _ids(conn, "logs_c") == list(range(5701, 6001))
        assert _ids(conn, "logs_d") == list(range(6001, 6501))
    assert [run["rows_affected"] for run in history("purge-logs")] == [5700]


def test_a_filtered_purge_of_a_partitioned_table_drops_no_partition(
    project: Project, pg_url: str
) -> None:
    today = datetime.now(UTC).date()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE logs (id bigint NOT NULL, created_at date NOT NULL, level text)"
            " PARTITION BY RANGE (created_at)"
        )
        conn.execute(
            f"CREATE TABLE logs_old PARTITION OF logs FOR VALUES FROM ('{today.year - 2}-01-01')"
            f" TO ('{_day(today - timedelta(days=60))}')"
        )
        conn.execute("CREATE TABLE logs_rest PARTITION OF logs DEFAULT")
        conn.execute(
            "INSERT INTO logs VALUES (1, %s, 'debug'), (2, %s, 'error'), (3, %s, 'debug')",
            (today - timedelta(days=100), today - timedelta(days=100), today),
        )
    _write(
        project,
        pg_url,
        _purge_job("purge-debug", "logs", "created_at", "30d", 'where = { level = "debug" }'),
    )
    preview = project.cli("preview", "purge-debug", "--json").json()
    assert (preview["drop_partitions"], preview["rows"]) == ({}, 1)
    assert project.cli("run", "purge-debug").returncode == 0
    with psycopg.connect(pg_url) as conn:
        assert _ids(conn, "logs") == [2, 3]


@pytest.mark.slow
def test_application_statements_never_wait_longer_than_lock_timeout(
    project: Project, pg_url: str, history: History
) -> None:
    """A writer inserts and updates rows (old ones included) every few milliseconds while
    300,000 old rows are purged; one old row is also locked by an open application
    transaction for 3 seconds. The purge skips locked rows instead of queueing behind them
    while holding its own, so the application never waits on it for long; a later sweep
    deletes the row once it is released."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, "
            "hits int NOT NULL DEFAULT 0, payload text)"
        )
        conn.execute(
            "INSERT INTO events (at, payload) SELECT now() - interval '60 days' "
            "+ g * interval '1 second', repeat('x', 80) FROM generate_series(1, 300000) g"
        )
        conn.execute(
            "INSERT INTO events (at, payload) SELECT now() - g * interval '1 second', 'new' "
            "FROM generate_series(1, 20000) g"
        )
        conn.execute("CREATE INDEX ON events (at)")
        conn.execute("VACUUM ANALYZE events")
    _write(
        project,
        pg_url,
        _purge_job(
            "purge-events",
            "events",
            "at",
            "30d",
            'lock_timeout = "500ms"\nstatement_timeout = "10s"',
        ),
    )

    waits: list[float] = []
    stop = threading.Event()

    def application() -> None:
        with psycopg.connect(pg_url, autocommit=True) as app:
            n = 0
            while not stop.is_set():
                n += 1
                began = time.perf_counter()
                app.execute("INSERT INTO events (at, payload) VALUES (now(), 'app')")
                app.execute(
                    "UPDATE events SET hits = hits + 1 WHERE id = %s", (1 + (n * 7919) % 300000,)
                )
                waits.append(time.perf_counter() - began)
                time.sleep(0.005)

    locker = psycopg.connect(pg_url)
    locker.execute("SELECT * FROM events WHERE id = 150000 FOR UPDATE")
    writer = threading.Thread(target=application)
    writer.start()
    try:
        purge = project.popen("run", "purge-events", "--json")
        time.sleep(3)
        locker.commit()  # the row the purge was waiting for is released
        stdout, stderr = purge.communicate(timeout=300)
    finally:
        stop.set()
        writer.join(30)
        locker.close()

    assert purge.returncode == 0, stdout + stderr
    assert len(waits) > 100
    print(f"application statements: {len(waits)}, worst wait {max(waits) * 1000:.0f} ms")
    assert max(waits) < 0.5, f"worst application wait {max(waits) * 1000:.0f} ms"
    (run,) = history("purge-events")
    assert run["status"] == "succeeded"
    assert run["rows_affected"] == 300000
    assert run["result"]["sweeps"] >= 1, "the locked row was skipped, then swept"
    assert "left_for_next_run" not in run["result"]
    with psycopg.connect(pg_url) as conn:
        old = conn.execute(
            "SELECT count(*) FROM events WHERE at < now() - interval '30 days'"
        ).fetchone()
        young = conn.execute("SELECT count(*) FROM events WHERE payload = 'new'").fetchone()
    assert old == (0,)
    assert young == (20000,)


def test_a_table_whose_name_holds_percent_signs_and_quotes_is_purged_and_exported(
    project: Project, pg_url: str, history: History
) -> None:
    """Names are quoted as SQL quotes them; a '%' is not a placeholder in them."""
    cutoff = datetime.now(UTC) - timedelta(days=30)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute('CREATE TABLE "50% off ""deals""" (id int PRIMARY KEY, "at%" timestamptz)')
        for row_id, moment in enumerate(
            [cutoff - timedelta(days=1), cutoff - timedelta(seconds=1), cutoff + timedelta(1)]
        ):
            conn.execute('INSERT INTO "50%% off ""deals""" VALUES (%s, %s)', (row_id, moment))
    jobs = _purge_job("deals", '50% off \\"deals\\"', "at%", "30d")
    jobs += """
        [jobs.export]
        task = "export"
        database = "app"
        table = '50% off "deals"'
        path = "out/deals.csv"
    """
    _write(project, pg_url, jobs)
    result = project.cli("run", "deals", "export", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [run["rows_affected"] for run in result.json()] == [2, 1]
    with psycopg.connect(pg_url) as conn:
        assert _ids(conn, '"50% off ""deals"""') == [2]
    lines = (project.path / "out" / "deals.csv").read_text().splitlines()
    assert len(lines) == 2
    assert (lines[0], lines[1][:2]) == ("id,at%", "2,")
    assert [run["status"] for run in history()] == ["succeeded", "succeeded"]
