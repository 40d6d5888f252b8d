"""A run's connection to one of its databases, whatever the backend: outside any
transaction (tasks open their own), named in PostgreSQL's activity view, and
interrupted when the run is cancelled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection

from dbkeeper.context import RunContext
from dbkeeper.dialects import postgres as pg
from dbkeeper.dialects import sqlite as sqlite_sql


@contextmanager
def connect(ctx: RunContext, database: str | None = None) -> Iterator[Connection]:
    target = ctx.target(database)
    if target.backend == "postgresql":
        with pg.connect(target, ctx.application_name, ctx.token) as conn:
            yield conn
        return
    with (
        sqlite_sql.connect(target) as conn,
        ctx.token.interrupting(sqlite_sql.driver(conn).interrupt),
    ):
        yield conn
