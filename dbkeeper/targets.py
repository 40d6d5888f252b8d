"""The databases jobs maintain: engines, catalogue checks and identifier quoting.

Identifiers from config are never pasted into SQL as given: they are looked up
in the database's catalogue first, then quoted by the dialect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from dbkeeper.errors import TargetError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def resolve_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path relative to the config file's folder, and have
    ``postgresql://`` URLs use psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{url!r} is not a database URL (e.g. sqlite:///app.db)") from None
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    path = Path(database)
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def create_sqlite_friendly_engine(url: str) -> Engine:
    """An engine whose SQLite connections wait for locks and leave transactions to us."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(url, isolation_level="AUTOCOMMIT")
            event.listen(engine, "connect", _configure_sqlite)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise TargetError(f"cannot use database URL {url!r}: {exc}") from None


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool


class Target:
    """One database named in ``[databases.NAME]``."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url

    @cached_property
    def engine(self) -> Engine:
        return create_sqlite_friendly_engine(self.url)

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()

    def libpq_url(self, *, password: bool = True) -> str:
        """The URL as libpq-based tools take it (``postgresql://``, no SQLAlchemy driver)."""
        url = make_url(self.url).set(drivername="postgresql")
        if not password:
            url = url.set(password=None)
        return url.render_as_string(hide_password=False)

    @property
    def sqlite_path(self) -> Path:
        database = make_url(self.url).database
        if self.backend != "sqlite" or not database or database == ":memory:":
            raise TargetError(f"database {self.name!r} is not a SQLite file")
        return Path(database)

    def quote(self, identifier: str) -> str:
        """The identifier quoted as standard SQL does, as SQLite and PostgreSQL read it.
        (SQLAlchemy's quoting for psycopg doubles a '%', which only its own compiled
        statements undo: a name holding one was not found.)"""
        return '"' + identifier.replace('"', '""') + '"'

    def tables(self) -> list[str]:
        try:
            return list(inspect(self.engine).get_table_names())
        except SQLAlchemyError as exc:
            raise TargetError(f"database {self.name!r}: {_first_line(exc)}") from None

    def columns(self, table: str) -> dict[str, Column]:
        """The table's columns from the catalogue; a clear error if the table is missing."""
        if self.backend == "sqlite" and not self.sqlite_path.exists():
            raise TargetError(f"database {self.name!r}: file {self.sqlite_path} does not exist")
        tables = self.tables()
        if table not in tables:
            known = ", ".join(sorted(tables)) or "none"
            raise TargetError(f"database {self.name!r} has no table {table!r} (tables: {known})")
        found = inspect(self.engine).get_columns(table)
        return {
            col["name"]: Column(col["name"], str(col["type"]), bool(col["nullable"]))
            for col in found
        }

    def require_columns(self, table: str, names: list[str]) -> dict[str, Column]:
        columns = self.columns(table)
        for name in names:
            if name not in columns:
                known = ", ".join(columns)
                raise TargetError(
                    f"table {table!r} in database {self.name!r} has no column {name!r} "
                    f"(columns: {known})"
                )
        return columns

    def dispose(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()


@contextmanager
def transaction(conn: Connection) -> Iterator[None]:
    """One explicit transaction on an autocommit connection, rolled back on any error."""
    conn.exec_driver_sql("BEGIN")
    try:
        yield
    except BaseException:
        with suppress(DBAPIError):  # a broken connection cannot roll back; the error says why
            conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")


def database_reason(exc: Exception) -> str:
    """The first line of what the database driver said (or of the error itself)."""
    return str(exc.orig if isinstance(exc, DBAPIError) else exc).strip().splitlines()[0]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]
