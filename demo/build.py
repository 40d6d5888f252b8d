"""Build the demo: a realistic application database to maintain, next to demo/dbkeeper.toml.

    python demo/build.py demo

Creates app.db with four months of system logs (ISO text times, like SQLite's
CURRENT_TIMESTAMP), API events stamped in Unix milliseconds, daily counters, and
a sessions table whose churn left free pages behind. Any earlier demo state is
removed, so every run starts from the same place.
"""

from __future__ import annotations

import random
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

LOG_ROWS = 120_000
EVENT_ROWS = 60_000
HISTORY = timedelta(days=120)
LEVELS = ["debug"] * 6 + ["info"] * 3 + ["warning", "error"]
SERVICES = ["api", "worker", "billing", "auth", "search"]


def build(folder: Path) -> Path:
    for leftover in folder.glob("*.db*"):
        leftover.unlink()
    database = folder / "app.db"
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(42)
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(
            """
            CREATE TABLE system_logs (
                id INTEGER PRIMARY KEY,
                timestamp TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
                level TEXT NOT NULL,
                service TEXT NOT NULL,
                message TEXT NOT NULL
            );
            CREATE INDEX system_logs_timestamp ON system_logs (timestamp);
            CREATE TABLE api_events (
                id INTEGER PRIMARY KEY,
                created_ms INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                status TEXT NOT NULL,
                path TEXT NOT NULL
            );
            CREATE INDEX api_events_created ON api_events (created_ms);
            CREATE TABLE daily_counters (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL,
                reset_at TEXT
            );
            CREATE TABLE sessions (
                id INTEGER PRIMARY KEY,
                user_id INTEGER NOT NULL,
                data BLOB NOT NULL,
                expires_at TEXT NOT NULL
            );
            """
        )
        span = HISTORY.total_seconds()
        conn.executemany(
            "INSERT INTO system_logs (timestamp, level, service, message) VALUES (?, ?, ?, ?)",
            (
                (
                    (now - timedelta(seconds=span * (LOG_ROWS - i) / LOG_ROWS)).strftime(
                        "%Y-%m-%d %H:%M:%S"
                    ),
                    rng.choice(LEVELS),
                    rng.choice(SERVICES),
                    f"request {i} handled in {rng.randint(1, 900)} ms",
                )
                for i in range(LOG_ROWS)
            ),
        )
        now_ms = int(now.timestamp() * 1000)
        conn.executemany(
            "INSERT INTO api_events (created_ms, user_id, status, path) VALUES (?, ?, ?, ?)",
            (
                (
                    now_ms - int(span * 1000 * (EVENT_ROWS - i) / EVENT_ROWS),
                    rng.randint(1, 500),
                    rng.choice(["done", "done", "done", "failed", "pending"]),
                    rng.choice(["/login", "/search", "/checkout", "/profile"]),
                )
                for i in range(EVENT_ROWS)
            ),
        )
        conn.executemany(
            "INSERT INTO daily_counters (name, value) VALUES (?, ?)",
            [(name, rng.randint(100, 5000)) for name in ("signups", "logins", "orders")],
        )
        conn.executemany(
            "INSERT INTO sessions (user_id, data, expires_at) VALUES (?, ?, ?)",
            (
                (
                    rng.randint(1, 500),
                    rng.randbytes(2000),
                    (now + timedelta(hours=i % 48)).isoformat(),
                )
                for i in range(8_000)
            ),
        )
        conn.execute("DELETE FROM sessions WHERE id % 4 != 0")
    return database


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    print(f"built {build(folder)}")
