"""Helpers that build real SQLite files for tests."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def create(path: Path, ddl: str, rows: Iterable[Sequence[Any]] = (), insert: str = "") -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(ddl)
        if insert:
            conn.executemany(insert, rows)
    conn.close()
    return path


def query(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def ids(path: Path, table: str) -> list[int]:
    return [row[0] for row in query(path, f"SELECT id FROM {table} ORDER BY id")]


def digest(path: Path) -> str:
    """A hash of the database file and its WAL, to prove nothing changed."""
    hasher = hashlib.sha256()
    for candidate in (path, path.with_name(path.name + "-wal")):
        if candidate.exists():
            hasher.update(candidate.read_bytes())
    return hasher.hexdigest()
