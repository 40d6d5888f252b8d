"""A query's rows as Arrow record batches, read through Arrow's ADBC drivers inside one
read transaction, so the count and every batch come from the same snapshot.

SQLite's driver takes each column's type from the values in the first batch and fails
when a later value does not fit: a text column that is NULL all through the first
batch, an integer column that also holds reals (SQLite stores each value with its own
type, whatever the column declares). Reading again with ``typed=True`` gives every
column one type that holds all its values, found by one scan of the values' ``typeof``:
integers and reals as reals, anything with text as text, anything with a blob as blob,
each converted by SQLite itself. A first row of those types, dropped here, sets the
driver's inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbkeeper.errors import DbkeeperError
from dbkeeper.targets import Target

if TYPE_CHECKING:
    from adbc_driver_manager import AdbcConnection
    from pyarrow import RecordBatch, RecordBatchReader, Schema

BATCH_ROWS = 16_384  # rows per batch read from SQLite (and seen by its type inference)
_ROWS = "dbkeeper_rows"  # the query's name inside the typed query
_FIRST = {"integer": "0", "real": "0.0", "text": "''", "blob": "X''"}
_CAST = {
    "integer": "{}",
    "real": "CAST({} AS REAL)",
    "text": "CAST({} AS TEXT)",
    "blob": "CAST({} AS BLOB)",
}


class MixedTypes(DbkeeperError):
    """A column holds values of more than one type; read again with ``typed=True``."""


@dataclass
class Rows:
    schema: Schema
    batches: Iterator[RecordBatch]


class Snapshot:
    """An ADBC connection to one database, inside one read transaction."""

    def __init__(self, target: Target, conn: AdbcConnection) -> None:
        self.target = target
        self.conn = conn

    def count(self, query: str) -> int:
        return int(self._scalar(f"SELECT count(*) FROM ({query}) AS s"))

    @contextmanager
    def rows(self, query: str, typed: bool = False) -> Iterator[Rows]:
        """The rows of ``query``; with ``typed`` (SQLite), every column with one type
        that holds all its values."""
        columns = self._columns(query) if typed else None
        with self._reader(_typed(self.target, query, columns)) as reader:
            yield Rows(reader.schema, _read_ahead(reader, typed))

    def _scalar(self, query: str) -> Any:
        with self._reader(query) as reader:
            return reader.read_all().column(0)[0].as_py()

    @contextmanager
    def _reader(self, query: str) -> Iterator[RecordBatchReader]:
        """The rows of ``query`` as Arrow batches, read as they are asked for."""
        import adbc_driver_manager
        import pyarrow as pa

        with adbc_driver_manager.AdbcStatement(self.conn) as statement:
            if self.target.backend == "sqlite":
                statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
            statement.set_sql_query(query)
            stream, _ = statement.execute_query()
            try:  # the driver reads the first batch for the schema
                reader = pa.RecordBatchReader.from_stream(stream)
            except OSError as exc:
                raise _mixed(exc) from None
            with reader:
                yield reader

    def _columns(self, query: str) -> list[tuple[str, str]]:
        """Each column's name and the one type holding all its values, from one scan."""
        with self._reader(f"SELECT * FROM ({query}) LIMIT 0") as reader:
            names = reader.schema.names
        inner = [f"c{i}" for i in range(len(names))]
        tests = ", ".join(
            f"max(typeof({c}) = 'blob'), max(typeof({c}) = 'text'), max(typeof({c}) = 'real')"
            for c in inner
        )
        scan = f"WITH {_ROWS}({', '.join(inner)}) AS ({query}) SELECT {tests} FROM {_ROWS}"
        with self._reader(scan) as reader:
            flags = list(reader.read_all().to_pylist()[0].values())
        kinds = [
            "blob" if blob else "text" if text else "real" if real else "integer"
            for blob, text, real in zip(flags[0::3], flags[1::3], flags[2::3], strict=True)
        ]
        return list(zip(names, kinds, strict=True))


@contextmanager
def snapshot(target: Target) -> Iterator[Snapshot]:
    """A connection inside one read transaction (REPEATABLE READ on PostgreSQL), rolled
    back at the end: nothing is changed. ADBC's low-level API: its DB-API layer imports
    ``pyarrow.dataset`` (about 50 ms, and 17 MB more at an export's peak)."""
    import adbc_driver_manager

    if target.backend == "postgresql":
        import adbc_driver_postgresql

        database = adbc_driver_postgresql.connect(target.libpq_url())
    else:
        import adbc_driver_sqlite

        database = adbc_driver_sqlite.connect(str(target.sqlite_path))
    with database, adbc_driver_manager.AdbcConnection(database) as conn:
        conn.set_autocommit(False)  # the driver begins a transaction
        if target.backend == "postgresql":
            _update(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try:
            yield Snapshot(target, conn)
        finally:
            conn.rollback()


def _mixed(exc: OSError) -> Exception:
    """The driver's error, or ``MixedTypes`` when a value did not fit its column's type."""
    return MixedTypes() if "Type mismatch" in str(exc) else exc


def _update(conn: AdbcConnection, statement_sql: str) -> None:
    import adbc_driver_manager

    with adbc_driver_manager.AdbcStatement(conn) as statement:
        statement.set_sql_query(statement_sql)
        statement.execute_update()


def _typed(target: Target, query: str, columns: list[tuple[str, str]] | None) -> str:
    """``query`` with each column converted to its type, after a first row of those
    types (dropped when read); ``query`` itself without ``columns``."""
    if columns is None:
        return query
    inner = [f"c{i}" for i in range(len(columns))]
    first = ", ".join(f"{_FIRST[kind]} AS {target.quote(name)}" for name, kind in columns)
    rest = ", ".join(_CAST[kind].format(c) for c, (_, kind) in zip(inner, columns, strict=True))
    return (
        f"WITH {_ROWS}({', '.join(inner)}) AS ({query}) "
        f"SELECT {first} UNION ALL SELECT {rest} FROM {_ROWS}"
    )


def _read_ahead(reader: RecordBatchReader, typed: bool) -> Iterator[RecordBatch]:
    """The reader's batches, the next one read by a thread while the caller writes this
    one (the drivers and pyarrow's writers both work without the GIL): an export takes
    about as long as the slower of reading and writing, not their sum."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbkeeper-read") as pool:
        pending = pool.submit(_next_batch, reader)
        first = True
        while (batch := pending.result()) is not None:
            pending = pool.submit(_next_batch, reader)
            yield batch.slice(1) if typed and first else batch
            first = False


def _next_batch(reader: RecordBatchReader) -> RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
    except OSError as exc:
        raise _mixed(exc) from None
