"""SQLite's maintenance SQL: purge windows, VACUUM, optimize and health figures.

Every identifier reaching this module has been checked against the catalogue
and is quoted here by the dialect; every value is a bound parameter.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from dbkeeper.archive import Archive
from dbkeeper.dialects.common import owner_groups
from dbkeeper.errors import TargetError
from dbkeeper.targets import Target
from dbkeeper.timeformats import TimeFormat

_UNIX_EPOCH_JULIAN_DAY = 2440587.5


@contextmanager
def connect(target: Target) -> Iterator[Connection]:
    with target.engine.connect() as conn:
        yield conn


def driver(conn: Connection) -> sqlite3.Connection:
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


def step_through(conn: Connection, statement: str) -> None:
    """Run a statement to completion. ``PRAGMA incremental_vacuum`` frees one page per
    step, and only ``executescript`` steps a row-less statement until it is done."""
    driver(conn).executescript(statement)


def data_version(conn: Connection) -> int:
    """Changes when another connection commits to the file; our own commits leave it."""
    return int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())


def uses_wal(conn: Connection) -> bool:
    return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()).lower() == "wal"


@contextmanager
def counted_alongside(
    target: Target, conn: Connection, query: PurgeQuery, plan: Plan
) -> Iterator[Future[int]]:
    """The rows to delete as they are now, before ``conn`` deletes any. Unless the plan
    counted them, they are counted on a second connection while ``conn`` deletes: its
    read transaction begins here, and with a WAL it keeps seeing the rows as they were,
    until the count ends it (a reader holds back checkpoints). Without a WAL, its read
    lock would hold up every commit: counted here, first."""
    future: Future[int] = Future()
    if plan.rows is not None or not uses_wal(conn):
        future.set_result(query.count(conn) if plan.rows is None else plan.rows)
        yield future
        return
    with (
        target.engine.connect() as counter,
        ThreadPoolExecutor(1, thread_name_prefix="dbkeeper-count") as pool,
    ):
        raw = driver(counter)
        raw.execute("BEGIN")
        raw.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # takes the snapshot

        def count() -> int:
            try:
                return query.count(counter)
            finally:
                raw.rollback()

        future = pool.submit(count)
        try:
            yield future
        finally:
            if not future.done():
                raw.interrupt()
            wait([future])


def checkpoint(conn: Connection) -> None:
    """Copy what our commits left in the WAL into the database file now (passive: nobody
    waits for it), so that the application's next commit does not pay for it. Without
    a WAL there is nothing to do."""
    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()


def julian_to_datetime(value: float | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp((value - _UNIX_EPOCH_JULIAN_DAY) * 86400, UTC)


class Window(NamedTuple):
    """One purge window: its condition and the values of its bounds."""

    condition: str
    bounds: dict[str, Any]


class KeyWalk:
    """Windows over the table's key, for a time column no index leads with: from ``low``
    to ``high``, ending once the part's ``rows`` are gone. ``condition`` keeps indexes
    out ('+' before its columns): within a key window the key must drive the scan."""

    def __init__(self, key: str, condition: str, low: int, high: int, rows: int) -> None:
        self.key, self.condition, self.rows = key, condition, rows
        self.low, self.high = low, high

    def next(self, conn: Connection, width: int, deleted: int) -> Window | None:
        if self.low > self.high or deleted >= self.rows:
            return None
        high = min(self.low + width, self.high + 1)
        condition = f"{self.key} >= :low AND {self.key} < :high AND {self.condition}"
        window = Window(condition, {"low": self.low, "high": high})
        self.low = high
        return window


class Part(NamedTuple):
    """One part of the rows to delete: a range of the time column (``lower``, ``upper``:
    comparisons such as ``>= '0'``) and what the rows must also satisfy (``residual``,
    ``{c}`` standing for the column). ``narrow``: a band a few days wide."""

    lower: str | None
    upper: str
    residual: str
    narrow: bool

    def condition(self, column: str, lower: str | None = None, upper: str | None = None) -> str:
        """The part's condition, its range narrowed to ``lower`` and ``upper`` if given."""
        terms = [
            f"{column} {bound}" for bound in (lower or self.lower, upper or self.upper) if bound
        ]
        if self.residual:
            terms.append(self.residual.format(c=column))
        return " AND ".join(terms)


class TimeWalk:
    """Windows over the time column through the index that leads with it, in its order:
    each ends at the value ``width`` matching rows on (rows sharing that value go with
    it), the last takes what is left. A DELETE by index range costs what one DELETE of
    the whole part costs; windows by key read each row's time from the table instead.
    Each window's condition has one lower and one upper bound of the column, so SQLite
    ranges the index on those two."""

    def __init__(self, query: PurgeQuery, part: Part, filters: str) -> None:
        self.query, self.part, self.filters = query, part, filters
        self._after: Any = None
        self._done = False

    def next(self, conn: Connection, width: int, deleted: int) -> Window | None:
        if self._done:
            return None
        column, part = self.query.column, self.part
        lower, bounds = (None, {}) if self._after is None else ("> :after", {"after": self._after})
        upto = conn.execute(
            text(
                f"SELECT {column} FROM {self.query.table} "
                f"WHERE {part.condition(column, lower)}{self.filters} "
                f"ORDER BY {column} LIMIT 1 OFFSET :width"
            ),
            {**self.query.params, **bounds, "width": width},
        ).scalar()
        if upto is None:
            self._done = True
            return Window(part.condition(column, lower) + self.filters, bounds)
        self._after = upto
        condition = part.condition(column, lower, "<= :upto") + self.filters
        return Window(condition, {**bounds, "upto": upto})


@dataclass(frozen=True)
class Plan:
    walks: list[KeyWalk | TimeWalk]
    rows: int | None  # counted for walks by key; through the time index, left to count()


class PurgeQuery:
    """The SQL of one purge: which rows are older than the cutoff, window by window."""

    def __init__(
        self,
        target: Target,
        table: str,
        column: str,
        time_format: TimeFormat,
        cutoff: datetime,
        filters: Mapping[str, object],
        key: str,
    ) -> None:
        self.table = target.quote(table)
        self.column_name = column
        self.column = target.quote(column)
        self.key = key if key == "rowid" else target.quote(key)
        self.time_format = time_format
        self.filters = [(target.quote(name), value) for name, value in filters.items()]
        self.params: dict[str, Any] = {}
        if time_format is TimeFormat.ISO:
            day = cutoff.astimezone(UTC).date()
            self.params["text_sure"] = (day - timedelta(days=1)).isoformat()
            self.params["text_bound"] = (day + timedelta(days=2)).isoformat()
            self.params["cutoff"] = cutoff.astimezone(UTC).isoformat(timespec="milliseconds")
        else:
            self.params["cutoff"] = time_format.cutoff_value(cutoff)
        for index, (_, value) in enumerate(self.filters):
            self.params[f"filter_{index}"] = value
        self.condition = self._whole_condition()

    def _filters(self, prefix: str) -> str:
        condition = ""
        for index, (name, value) in enumerate(self.filters):
            if value is None:
                condition += f" AND {prefix}{name} IS NULL"
            else:
                condition += f" AND {prefix}{name} = :filter_{index}"
        return condition

    def _whole_condition(self) -> str:
        """Every row to delete, in one range of an index on the time column."""
        column = self.column
        if self.time_format is TimeFormat.ISO:
            # ISO text sorts by date, and no zone offset moves a time by a whole day:
            # text before the day ahead of the cutoff's day is certainly older, text
            # from two days after it certainly not, and only the rows between need
            # julianday() (exact, offsets included). Text >= '0' keeps numbers, NULLs
            # and blobs out.
            condition = (
                f"{column} >= '0' AND {column} < :text_bound AND "
                f"({column} < :text_sure OR julianday({column}) < julianday(:cutoff))"
            )
        else:
            condition = f"{column} < :cutoff"
        return condition + self._filters("")

    def _parts(self) -> list[Part]:
        """The whole condition as disjoint parts, each cheap per row: for ISO text the rows
        certainly older by their text alone, then the narrow band where julianday()
        decides."""
        if self.time_format is TimeFormat.ISO:
            return [
                Part(">= '0'", "< :text_sure", "", narrow=False),
                Part(
                    ">= :text_sure",
                    "< :text_bound",
                    "julianday({c}) < julianday(:cutoff)",
                    narrow=True,
                ),
            ]
        return [Part(None, "< :cutoff", "", narrow=False)]

    def plan(self, conn: Connection) -> Plan:
        """How to walk each part of the rows to delete.

        With an index that leads with the time column, each part that has rows is
        walked through it, and the rows are counted apart (``count``). Otherwise by key,
        counted here: a narrow part over its own key range, a wide one from the table's
        first key until its counted rows are gone (its lowest and highest keys would
        cost a pass over the whole part, more than the count)."""
        by_time = leads_an_index(conn, self.table, self.column_name)
        keys = f"min({self.key}), max({self.key})"
        walks: list[KeyWalk | TimeWalk] = []
        for part in self._parts():
            condition = part.condition(self.column) + self._filters("")
            if by_time:  # filters '+': the time column's index must drive the scan
                found = conn.execute(
                    text(f"SELECT 1 FROM {self.table} WHERE {condition} LIMIT 1"), self.params
                ).first()
                if found is not None:
                    walks.append(TimeWalk(self, part, self._filters("+")))
                continue
            if part.narrow:
                count, low, high = conn.execute(
                    text(f"SELECT count(*), {keys} FROM {self.table} WHERE {condition}"),
                    self.params,
                ).one()
            else:
                count = conn.execute(
                    text(f"SELECT count(*) FROM {self.table} WHERE {condition}"), self.params
                ).scalar_one()
                low, high = conn.execute(text(f"SELECT {keys} FROM {self.table}")).one()
            if count:
                window = part.condition("+" + self.column) + self._filters("+")
                walks.append(KeyWalk(self.key, window, int(low), int(high), int(count)))
        rows = None if by_time else sum(walk.rows for walk in walks if isinstance(walk, KeyWalk))
        return Plan(walks=walks, rows=rows)

    def count(self, conn: Connection) -> int:
        """Exact count of the rows to delete."""
        return int(
            conn.execute(
                text(f"SELECT count(*) FROM {self.table} WHERE {self.condition}"), self.params
            ).scalar_one()
        )

    def table_rows(self, conn: Connection) -> int:
        return int(conn.execute(text(f"SELECT count(*) FROM {self.table}")).scalar_one())

    def any_kept(self, conn: Connection) -> bool:
        """Whether a row certainly newer than the cutoff exists, found through an index
        on the time column at once (the guard then needs no count of the table)."""
        bound = ":text_bound" if self.time_format is TimeFormat.ISO else ":cutoff"
        found = conn.execute(
            text(f"SELECT 1 FROM {self.table} WHERE {self.column} >= {bound} LIMIT 1"),
            self.params,
        ).first()
        return found is not None

    def edges(self, conn: Connection) -> tuple[datetime | None, datetime | None]:
        """The oldest and newest times of the rows to delete."""
        return self.edge(conn, "ASC"), self.edge(conn, "DESC")

    def edge(self, conn: Connection, order: str) -> datetime | None:
        """The oldest (``ASC``) or newest (``DESC``) time of the rows to delete, each
        through the index on its own (a run records only the oldest)."""
        if self.time_format is TimeFormat.ISO:
            return self._to_datetime(self._iso_edge(conn, order))
        edge = "min" if order == "ASC" else "max"
        value = conn.execute(
            text(f"SELECT {edge}({self.column}) FROM {self.table} WHERE {self.condition}"),
            self.params,
        ).scalar()
        return self._to_datetime(value)

    def _iso_edge(self, conn: Connection, order: str) -> Any:
        """The oldest (``ASC``) or newest (``DESC``) matching time of ISO text, as a julian day,
        from the index: the first text in that order, then julianday() only over the texts
        within three days of it (zone offsets move a time by less than a day), not over
        every matching row. The band's bound is a parameter written first, so SQLite takes
        it as the index range."""
        column, ascending = self.column, order == "ASC"
        edge, compare, shift = ("min", "<", "+") if ascending else ("max", ">=", "-")
        band = conn.execute(
            text(
                f"SELECT date({column}, '{shift}3 days') FROM {self.table} "
                f"WHERE {self.condition} ORDER BY {column} {order} LIMIT 1"
            ),
            self.params,
        ).scalar()
        if band is None:
            return None
        return conn.execute(
            text(
                f"SELECT {edge}(julianday({column})) FROM {self.table} "
                f"WHERE {column} {compare} :band AND {self.condition}"
            ),
            {**self.params, "band": band},
        ).scalar()

    def owners(self, conn: Connection, owner: str, limit: int) -> list[dict[str, Any]]:
        """Matching rows grouped by ``owner`` (a quoted column): count and oldest time."""
        return owner_groups(
            conn,
            self.table,
            self.condition,
            self.params,
            owner,
            self._moment,
            self._to_datetime,
            limit,
        )

    @property
    def _moment(self) -> str:
        """The time column as a number that orders: julianday() of ISO text."""
        return f"julianday({self.column})" if self.time_format is TimeFormat.ISO else self.column

    def _to_datetime(self, value: Any) -> datetime | None:
        if self.time_format is TimeFormat.ISO:
            return julian_to_datetime(value)
        return None if value is None else self.time_format.to_datetime(value)

    def samples(self, conn: Connection, limit: int) -> list[dict[str, Any]]:
        result = conn.execute(
            text(
                f"SELECT * FROM {self.table} WHERE {self.condition} "
                f"ORDER BY {self.key} LIMIT :limit"
            ),
            {**self.params, "limit": limit},
        )
        return [dict(row._mapping) for row in result]

    def delete_window(
        self, conn: Connection, window: Window, archive: Archive | None = None
    ) -> int:
        """Delete the window's rows in one short write transaction.

        With ``archive``, the rows are read and durably archived inside that transaction,
        before they are deleted: nobody can change them in between."""
        raw = driver(conn)
        condition = window.condition
        params = {**self.params, **window.bounds}
        batch = None
        raw.execute("BEGIN IMMEDIATE")
        try:
            if archive is not None:
                cursor = raw.execute(
                    f"SELECT {self.key}, * FROM {self.table} WHERE {condition} ORDER BY {self.key}",
                    params,
                )
                columns = [column[0] for column in cursor.description[1:]]
                rows = cursor.fetchall()
                if rows:
                    batch = archive.write(columns, [row[1:] for row in rows], [r[0] for r in rows])
            cursor = raw.execute(f"DELETE FROM {self.table} WHERE {condition}", params)
            if batch is not None and cursor.rowcount != batch.rows:
                raise TargetError(
                    f"archived {batch.rows} rows but the delete matched {cursor.rowcount}"
                )
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        if batch is not None and archive is not None:
            archive.done(batch)
        return int(cursor.rowcount)

    def keys_present(self, conn: Connection, keys: list[Any]) -> int:
        """How many of an archive batch's keys (``[first, last]`` runs) are in the table."""
        found = 0
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            ranges = " OR ".join(f"{self.key} BETWEEN ? AND ?" for _ in chunk)
            found += int(
                driver(conn)
                .execute(
                    f"SELECT count(*) FROM {self.table} WHERE {ranges}",
                    [bound for run in chunk for bound in run],
                )
                .fetchone()[0]
            )
        return found


def walk_key(target: Target, conn: Connection, table: str) -> str:
    """The integer key purge windows walk: the rowid, or a WITHOUT ROWID table's integer key."""
    quoted = target.quote(table)
    try:
        conn.exec_driver_sql(f"SELECT rowid FROM {quoted} LIMIT 0")
        return "rowid"
    except OperationalError:
        pass
    info = conn.exec_driver_sql(f"PRAGMA table_info({quoted})").all()
    keys = [row for row in info if row[5]]
    if len(keys) == 1 and "INT" in str(keys[0][2]).upper():
        return str(keys[0][1])
    raise TargetError(
        f"table {table!r} is WITHOUT ROWID and has no single integer primary key to walk"
    )


def leads_an_index(conn: Connection, table: str, column: str) -> bool:
    """Whether a full (not partial) index of ``table`` (quoted) has the column named
    ``column`` as its first column (SQLite's names ignore ASCII case)."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    for index in conn.exec_driver_sql(f"PRAGMA index_list({table})").all():
        if index[4]:  # partial
            continue
        first = conn.exec_driver_sql(f"PRAGMA index_info({quote(str(index[1]))})").first()
        name = None if first is None else first[2]  # None: an expression
        if name is not None and str(name).lower() == column.lower():
            return True
    return False


def sample_column(target: Target, conn: Connection, table: str, column: str) -> list[object]:
    """Values from both ends of the table and its middle, for format detection."""
    quoted_table, quoted_column = target.quote(table), target.quote(column)
    values: list[object] = []
    for order in ("ASC", "DESC"):
        values += (
            conn.exec_driver_sql(
                f"SELECT {quoted_column} FROM {quoted_table} WHERE {quoted_column} IS NOT NULL "
                f"ORDER BY rowid {order} LIMIT 200"
            )
            .scalars()
            .all()
        )
    values += (
        conn.exec_driver_sql(
            f"SELECT {quoted_column} FROM {quoted_table} WHERE {quoted_column} IS NOT NULL "
            "AND rowid % 97 = 0 LIMIT 200"
        )
        .scalars()
        .all()
    )
    return values


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def wal_size(path: Path) -> int:
    return file_size(path.with_name(path.name + "-wal"))


def page_stats(conn: Connection) -> dict[str, int]:
    page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
    page_count = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
    freelist = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())
    return {"page_size": page_size, "page_count": page_count, "freelist_count": freelist}


def vacuum(target: Target, conn: Connection) -> dict[str, Any]:
    """VACUUM, or incremental_vacuum when the file uses auto_vacuum=incremental."""
    path = target.sqlite_path
    before = page_stats(conn)
    size_before = file_size(path)
    auto_vacuum = int(conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one())
    mode = "incremental" if auto_vacuum == 2 else "full"
    if mode == "incremental":
        step_through(conn, "PRAGMA incremental_vacuum")
    else:
        conn.exec_driver_sql("VACUUM")
    if uses_wal(conn):
        step_through(conn, "PRAGMA wal_checkpoint(TRUNCATE)")
    after = page_stats(conn)
    size_after = file_size(path)
    saved = size_before - size_after
    return {
        "mode": mode,
        "size_before": size_before,
        "size_after": size_after,
        "bytes_saved": saved,
        "percent_saved": round(100 * saved / size_before, 2) if size_before else 0.0,
        "freelist_before": before["freelist_count"],
        "freelist_after": after["freelist_count"],
    }


def optimize(conn: Connection, mode: str, reindex: bool) -> list[str]:
    statements = ["PRAGMA optimize" if mode == "optimize" else "ANALYZE"]
    if reindex:
        statements.append("REINDEX")
    for statement in statements:
        step_through(conn, statement)
    return statements


def integrity(conn: Connection, full: bool) -> list[str]:
    pragma = "integrity_check" if full else "quick_check"
    return [str(row[0]) for row in conn.exec_driver_sql(f"PRAGMA {pragma}").all()]


def table_stats(target: Target, conn: Connection) -> list[dict[str, Any]]:
    """Row count and bytes (tables plus their indexes, from dbstat) per table."""
    names = [
        str(name)
        for name in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        ).scalars()
    ]
    sizes: dict[str, int] = {}
    try:
        for table_name, size in conn.exec_driver_sql(
            "SELECT m.tbl_name, sum(s.pgsize) FROM dbstat AS s "
            "JOIN sqlite_master AS m ON m.name = s.name GROUP BY m.tbl_name"
        ):
            sizes[str(table_name)] = int(size)
    except OperationalError:
        pass  # SQLite built without dbstat: sizes unknown
    return [
        {
            "table": name,
            "rows": int(
                conn.exec_driver_sql(f"SELECT count(*) FROM {target.quote(name)}").scalar_one()
            ),
            "bytes": sizes.get(name),
        }
        for name in names
    ]
