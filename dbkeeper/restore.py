"""Putting archived rows back into a table: ``dbkeeper restore-archive``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.exc import SQLAlchemyError

from dbkeeper.archive import read_batches
from dbkeeper.errors import DbkeeperError
from dbkeeper.targets import Target, database_reason, transaction


def restore_archive(target: Target, table: str, path: Path) -> dict[str, Any]:
    """Insert every committed batch of the archive at ``path`` into ``table``, all in one
    transaction: either every row is back or, on any error, none is."""
    with target.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with transaction(conn):
            return _insert(target, table, path, conn)


def _insert(target: Target, table: str, path: Path, conn: Connection) -> dict[str, Any]:
    restored = batches = 0
    suspect = []
    statement: TextClause | None = None
    for batch, rows in read_batches(path):
        if batch.table != table:
            raise DbkeeperError(
                f"{path}: batch {batch.batch} holds rows of table {batch.table!r}, not {table!r}"
            )
        if statement is None:
            target.require_columns(table, batch.columns)
            names = ", ".join(target.quote(column) for column in batch.columns)
            values = ", ".join(f":p{index}" for index in range(len(batch.columns)))
            statement = text(f"INSERT INTO {target.quote(table)} ({names}) VALUES ({values})")
        if rows:
            params = [{f"p{i}": _value(value) for i, value in enumerate(row)} for row in rows]
            try:
                conn.execute(statement, params)
            except SQLAlchemyError as exc:
                raise DbkeeperError(
                    f"{path}: batch {batch.batch} could not be inserted, nothing was "
                    f"restored: {database_reason(exc)}"
                ) from None
        restored += len(rows)
        batches += 1
        if batch.state == "suspect":
            suspect.append(batch.batch)
    return {
        "file": str(path),
        "database": target.name,
        "table": table,
        "batches": batches,
        "rows": restored,
        "suspect_batches": suspect,
    }


def _value(value: Any) -> Any:
    """JSON documents (from jsonb columns) go back as JSON text."""
    return json.dumps(value) if isinstance(value, dict | list) else value
