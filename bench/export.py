"""Export vs the native tools: ``sqlite3 -csv`` and PostgreSQL's ``COPY ... TO STDOUT``.

    python bench/export.py [--rows 2000000] [--rounds 3] [--url postgresql://...]

Builds a table of ROWS rows (integer key, ISO time text, short and long text, integer)
in SQLite and in a scratch PostgreSQL database, then per round:

- SQLite: ``sqlite3 -csv -header app.db 'SELECT * FROM events' > file`` vs dbkeeper's
  export to CSV (and to Parquet, with no native baseline);
- PostgreSQL: ``psql -c "\\copy events TO file CSV HEADER"`` vs dbkeeper's export to CSV.

dbkeeper is timed as a whole ``dbkeeper run`` process (start-up, the count in the same
snapshot and the history write included), like the baselines, and as a running
``dbkeeper start`` does it: from the request that queues the run over HTTP until the run
is recorded. Targets: at least as fast as ``sqlite3 -csv`` and >= 0.9x COPY; peak RSS
< 150 MB. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

DBKEEPER = Path(sys.executable).with_name("dbkeeper")
SCRATCH = "dbkeeper_bench_export"
TOKEN = "bench"


def build_sqlite(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT, level TEXT, message TEXT, n INT);"
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < "
        f"{rows}) INSERT INTO events SELECT i, "
        "strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i, 'unixepoch'), "
        "CASE i % 3 WHEN 0 THEN 'info' WHEN 1 THEN 'warn' ELSE 'error' END, "
        "'request ' || i || ' served in ' || (i % 997) || ' ms, user \"u' || (i % 50) || '\"', "
        "i % 1000 FROM g;"
    )
    conn.close()


def build_postgres(url: str, rows: int) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(SCRATCH)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
    scratch = make_url(url).set(database=SCRATCH).render_as_string(hide_password=False)
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, level text, "
            "message text, n int)"
        )
        conn.execute(
            "INSERT INTO events SELECT i, to_timestamp(1700000000 + i), "
            "(ARRAY['info', 'warn', 'error'])[i %% 3 + 1], "
            "'request ' || i || ' served in ' || (i %% 997) || ' ms, user \"u' "
            "|| (i %% 50) || '\"', "
            "i %% 1000 FROM generate_series(1, %s) i",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE events")
    return scratch


def timed(argv: list[str], cwd: Path, stdout: Any = subprocess.DEVNULL) -> float:
    """Seconds one process takes, started with nothing left to write back: the previous
    contender's 190 MB of unwritten file would otherwise be written during this one."""
    os.sync()
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - started


def export_seconds(folder: Path, job: str) -> float:
    """The export itself as the last run recorded it (no process start-up, no history)."""
    done = subprocess.run(
        [str(DBKEEPER), "history", job, "-n", "1", "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(done.stdout)[0]["result"]["seconds"])


@contextmanager
def service(folder: Path, port: int) -> Iterator[str]:
    """A ``dbkeeper start`` serving HTTP on ``port``; yields its base URL once it answers."""
    process = subprocess.Popen(
        [str(DBKEEPER), "start"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("dbkeeper start did not answer") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)


def served(base: str, job: str) -> float:
    """Seconds from the request that queues a run of ``job`` until the run is recorded."""
    os.sync()
    started = time.perf_counter()
    request = urllib.request.Request(
        f"{base}/api/jobs/{job}/run", method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request) as response:
        run_id = json.load(response)["run_id"]
    while True:
        with urllib.request.urlopen(f"{base}/api/runs/{run_id}") as response:
            run = json.load(response)
        if run["status"] not in ("queued", "running"):
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    if run["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} of {job}: {run['status']} {run['error']}")
    return elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_of(argv: list[str], cwd: Path) -> float:
    """Peak RSS of one process alone (RUSAGE_CHILDREN keeps the maximum of all children)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], cwd=cwd, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dbkeeper-export-bench-"))
    try:
        print(f"building {args.rows:,} rows ...", flush=True)
        build_sqlite(folder / "app.db", args.rows)
        scratch = build_postgres(args.url, args.rows)
        port = free_port()
        (folder / "dbkeeper.toml").write_text(
            f"""
[keeper.http]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[databases.app]
url = "sqlite:///app.db"

[databases.pg]
url = "{scratch}"

[jobs.csv]
task = "export"
database = "app"
table = "events"
path = "out/events.csv"
keep = 0

[jobs.parquet]
task = "export"
database = "app"
table = "events"
path = "out/events.parquet"
keep = 0

[jobs.pg-csv]
task = "export"
database = "pg"
table = "events"
path = "out/pg.csv"
keep = 0
"""
        )
        times: dict[str, list[float]] = {}
        with service(folder, port) as base:
            for round_number in range(1, args.rounds + 1):
                with open(folder / "native.csv", "wb") as out:
                    native = ["sqlite3", "-csv", "-header", "app.db", "SELECT * FROM events"]
                    times.setdefault("sqlite3 -csv", []).append(timed(native, folder, out))
                for job in ("csv", "parquet", "pg-csv"):
                    run = [str(DBKEEPER), "run", job]
                    times.setdefault(f"dbkeeper {job}", []).append(timed(run, folder))
                    only = export_seconds(folder, job)
                    times.setdefault(f"  {job}, export only", []).append(only)
                    times.setdefault(f"  {job}, dbkeeper start", []).append(served(base, job))
                copy = [
                    "psql",
                    scratch,
                    "-c",
                    f"\\copy events TO '{folder / 'copy.csv'}' CSV HEADER",
                ]
                times.setdefault("psql \\copy", []).append(timed(copy, folder))
                print(
                    f"round {round_number}: "
                    + ", ".join(f"{k.strip()} {v[-1]:.2f}s" for k, v in times.items())
                )
        median = {name: statistics.median(values) for name, values in times.items()}
        rss = rss_of([str(DBKEEPER), "run", "csv"], folder)
        rss_parquet = rss_of([str(DBKEEPER), "run", "parquet"], folder)
        rss_pg = rss_of([str(DBKEEPER), "run", "pg-csv"], folder)
        print(f"\nmedians over {args.rounds} rounds, {args.rows:,} rows:")
        for name, value in median.items():
            print(f"  {name:26} {value:6.2f} s")
        for name, job, baseline, target in (
            ("SQLite CSV", "csv", "sqlite3 -csv", "1.0"),
            ("PostgreSQL CSV", "pg-csv", "psql \\copy", "0.9"),
        ):
            run = median[baseline] / median[f"dbkeeper {job}"]
            served_speed = median[baseline] / median[f"  {job}, dbkeeper start"]
            print(
                f"{name}: dbkeeper run is {run:.2f}x the speed of {baseline} (target >= "
                f"{target}x); through dbkeeper start {served_speed:.2f}x"
            )
        print(
            f"peak RSS of dbkeeper: {rss:.0f} MB (SQLite CSV), {rss_parquet:.0f} MB (Parquet), "
            f"{rss_pg:.0f} MB (PostgreSQL CSV) (target < 150 MB)"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(SCRATCH)))


if __name__ == "__main__":
    main()
