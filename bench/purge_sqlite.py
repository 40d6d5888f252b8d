"""Purge vs a bare DELETE on SQLite, alone and with an application writer.

    python bench/purge_sqlite.py [--rows 2000000] [--rounds 3]

Builds a table of ROWS rows with an indexed time column, two thirds older than
the cutoff, and copies it for each contender so both start from the same file.

- alone: dbkeeper's purge vs ``DELETE FROM t WHERE ts < cutoff`` in one
  transaction. Target: purge <= 1.1x the DELETE.
- shared: the same, while a second process inserts a row every 5 ms and
  records how long each insert waits. Target: the writer's worst wait <= 50 ms
  during dbkeeper's purge, while the purge takes <= 2x the bare DELETE.

Prints medians over the rounds and the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event
from pathlib import Path

from purge_job import timed_purge

RETENTION_DAYS = 30


def build(path: Path, rows: int) -> None:
    now = datetime.now(UTC)
    span = timedelta(days=RETENTION_DAYS * 3).total_seconds()
    # Closed explicitly so the WAL is checkpointed into the file that gets copied.
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, payload TEXT)")
        conn.execute(
            "INSERT INTO events (ts, payload) "
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "SELECT strftime('%Y-%m-%d %H:%M:%f', ?, '-' || ((? - i) * ? / ?) || ' seconds'), "
            "'event ' || i FROM n",
            (rows - 1, now.strftime("%Y-%m-%d %H:%M:%S"), rows, span, rows),
        )
        conn.execute("CREATE INDEX events_ts ON events (ts)")


def cutoff_text() -> str:
    cutoff = datetime.now(UTC) - timedelta(days=RETENTION_DAYS)
    return cutoff.strftime("%Y-%m-%d %H:%M:%S")


def bare_delete(path: Path) -> float:
    with sqlite3.connect(path, timeout=60) as conn:
        started = time.perf_counter()
        conn.execute("DELETE FROM events WHERE ts < ?", (cutoff_text(),))
        conn.commit()
        return time.perf_counter() - started


def dbkeeper_purge(path: Path) -> float:
    return timed_purge(f"sqlite:///{path}", "ts", RETENTION_DAYS)[0]


def writer(path: str, stop: Event, ready: Event, waits: list[float]) -> None:
    conn = sqlite3.connect(path, timeout=30)
    ready.set()
    while not stop.is_set():
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO events (ts, payload) VALUES (?, 'app')",
            (datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),),
        )
        conn.commit()
        waits.append(time.perf_counter() - started)
        time.sleep(0.005)
    conn.close()


def with_writer(path: Path, contender: str) -> tuple[float, list[float]]:
    manager = multiprocessing.Manager()
    waits = manager.list()
    stop, ready = multiprocessing.Event(), multiprocessing.Event()
    process = multiprocessing.Process(target=writer, args=(str(path), stop, ready, waits))
    process.start()
    ready.wait()
    time.sleep(0.3)
    try:
        elapsed = bare_delete(path) if contender == "delete" else dbkeeper_purge(path)
    finally:
        stop.set()
        process.join()
    return elapsed, list(waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source.db"
        print(f"building {args.rows:,} rows ...", flush=True)
        build(source, args.rows)
        results: dict[str, list[float]] = {}
        worst: dict[str, list[float]] = {}
        for round_number in range(args.rounds):
            for situation in ("alone", "shared"):
                for contender in ("delete", "dbkeeper"):
                    copy = Path(folder) / f"{contender}-{situation}-{round_number}.db"
                    shutil.copy(source, copy)
                    os.sync()  # the copy's writeback is no contender's work
                    key = f"{situation}/{contender}"
                    if situation == "alone":
                        elapsed = (
                            bare_delete(copy) if contender == "delete" else dbkeeper_purge(copy)
                        )
                    else:
                        elapsed, waits = with_writer(copy, contender)
                        worst.setdefault(key, []).append(max(waits))
                    results.setdefault(key, []).append(elapsed)
                    copy.unlink()
                    print(f"  round {round_number + 1} {key}: {elapsed:.3f}s", flush=True)
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"\npurge vs bare DELETE, {args.rows:,} rows, median of {args.rounds} rounds")
    for situation, target in (("alone", 1.1), ("shared", 2.0)):
        delete, ours = median[f"{situation}/delete"], median[f"{situation}/dbkeeper"]
        print(
            f"  {situation:6}: DELETE {delete:.3f}s  dbkeeper {ours:.3f}s  "
            f"ratio {ours / delete:.2f}x  (target <= {target:.2f}x)"
        )
    for key in ("shared/delete", "shared/dbkeeper"):
        print(
            f"  writer's worst wait during {key.split('/')[1]}: "
            f"{statistics.median(worst[key]) * 1000:.0f} ms (median over rounds; target <= 50 ms)"
        )


if __name__ == "__main__":
    main()
