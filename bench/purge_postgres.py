"""Purge vs a bare DELETE on PostgreSQL, alone and with an application writer.

    python bench/purge_postgres.py [--rows 2000000] [--rounds 3] [--url postgresql://...]

Builds a table of ROWS rows with an indexed timestamptz column, two thirds older than
the cutoff, in a scratch database, and clones it (CREATE DATABASE ... TEMPLATE) for
each contender so both start from the same data.

- alone: dbkeeper's purge vs ``DELETE FROM events WHERE at < cutoff`` in one
  transaction. Target: purge <= 1.1x the DELETE.
- shared: the same while a second process inserts a row and updates an old row every
  5 ms, recording how long each statement waits. Targets: no purge transaction longer
  than 1 s and no application statement waiting on the purge's locks.

Prints medians over the rounds and the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
from psycopg import sql
from purge_job import timed_purge
from sqlalchemy.engine import make_url

RETENTION_DAYS = 30
SOURCE = "dbkeeper_bench_source"


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def database_url(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def build(url: str, rows: int) -> None:
    with admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(SOURCE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SOURCE)))
    with admin(database_url(url, SOURCE)) as conn:
        conn.execute(
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, "
            "hits int NOT NULL DEFAULT 0, payload text)"
        )
        conn.execute(
            "INSERT INTO events (at, payload) SELECT now() - interval '90 days' "
            "+ (g::float / %s) * interval '90 days', 'event ' || g "
            "FROM generate_series(1, %s) g",
            (rows, rows),
        )
        conn.execute("CREATE INDEX events_at ON events (at)")
        conn.execute("VACUUM ANALYZE events")


def clone(url: str, name: str) -> str:
    with admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(SOURCE)
            )
        )
    return database_url(url, name)


def drop(url: str, name: str) -> None:
    with admin(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def bare_delete(url: str) -> tuple[float, float]:
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute(f"DELETE FROM events WHERE at < now() - interval '{RETENTION_DAYS} days'")
        conn.commit()
        elapsed = time.perf_counter() - started
    return elapsed, elapsed


def dbkeeper_purge(url: str) -> tuple[float, float]:
    """Seconds for the whole run, and the longest purge transaction in seconds."""
    elapsed, run = timed_purge(url, "at", RETENTION_DAYS)
    return elapsed, run.result["longest_batch_ms"] / 1000


def writer(
    url: str, rows: int, stop: Event, ready: Event, waits: list[tuple[float, float]]
) -> None:
    """Every 5 ms an insert (which no purge lock can hold up: its time is the machine's
    noise) and an update of a random row, old ones included (which waits while a purge
    transaction holds that row); records both statements' times."""
    with psycopg.connect(url, autocommit=True) as conn:
        ready.set()
        n = 0
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            conn.execute("INSERT INTO events (at, payload) VALUES (now(), 'app')")
            inserted = time.perf_counter()
            conn.execute(
                "UPDATE events SET hits = hits + 1 WHERE id = %s", (1 + (n * 7919) % rows,)
            )
            waits.append((inserted - started, time.perf_counter() - inserted))
            time.sleep(0.005)


def with_writer(
    url: str, rows: int, contender: str
) -> tuple[float, float, list[tuple[float, float]]]:
    manager = multiprocessing.Manager()
    waits = manager.list()
    stop, ready = multiprocessing.Event(), multiprocessing.Event()
    process = multiprocessing.Process(target=writer, args=(url, rows, stop, ready, waits))
    process.start()
    ready.wait()
    time.sleep(0.3)
    try:
        elapsed, longest = bare_delete(url) if contender == "delete" else dbkeeper_purge(url)
    finally:
        stop.set()
        process.join()
    return elapsed, longest, list(waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    print(f"building {args.rows:,} rows ...", flush=True)
    build(args.url, args.rows)
    results: dict[str, list[float]] = {}
    longest: dict[str, list[float]] = {}
    worst: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for round_number in range(args.rounds):
            for situation in ("alone", "shared"):
                for contender in ("delete", "dbkeeper"):
                    name = f"dbkeeper_bench_{contender}"
                    url = clone(args.url, name)
                    key = f"{situation}/{contender}"
                    if situation == "alone":
                        elapsed, slowest = (
                            bare_delete(url) if contender == "delete" else dbkeeper_purge(url)
                        )
                    else:
                        elapsed, slowest, waits = with_writer(url, args.rows, contender)
                        updates = sorted(update for _, update in waits)
                        worst.setdefault(key, []).append(
                            (
                                max(insert for insert, _ in waits),
                                updates[-1],
                                updates[int(len(updates) * 0.99)],
                            )
                        )
                    results.setdefault(key, []).append(elapsed)
                    longest.setdefault(key, []).append(slowest)
                    drop(args.url, name)
                    print(f"  round {round_number + 1} {key}: {elapsed:.3f}s", flush=True)
    finally:
        drop(args.url, SOURCE)
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"\npurge vs bare DELETE on PostgreSQL, {args.rows:,} rows, median of {args.rounds}")
    for situation in ("alone", "shared"):
        ratio = median[f"{situation}/dbkeeper"] / median[f"{situation}/delete"]
        print(
            f"  {situation:6}: DELETE {median[f'{situation}/delete']:.3f}s  dbkeeper "
            f"{median[f'{situation}/dbkeeper']:.3f}s  ratio {ratio:.2f}x"
            + ("  (target <= 1.10x)" if situation == "alone" else "")
        )
    for contender in ("delete", "dbkeeper"):
        key = f"shared/{contender}"
        insert, update, update_p99 = (
            statistics.median(values[column] for values in worst[key]) * 1000 for column in range(3)
        )
        print(
            f"  {contender:8}: longest transaction {statistics.median(longest[key]) * 1000:.0f} ms"
            f" (target <= 1000 ms); application's updates: worst {update:.0f} ms, p99 "
            f"{update_p99:.0f} ms; inserts (no lock to wait for): worst {insert:.0f} ms"
        )


if __name__ == "__main__":
    main()
