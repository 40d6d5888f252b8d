"""PostgreSQL's maintenance SQL: purge windows, partitions, VACUUM, ANALYZE/REINDEX, health.

Purge windows walk the heap by block (``ctid`` ranges, a TID range scan), so any
table can be purged in short batches without an integer key and without OFFSET;
each batch is its own transaction with ``lock_timeout`` and ``statement_timeout``,
so a purge never waits long behind, or holds up, the application's locks.
Identifiers reaching this module have been checked against the catalogue and are
quoted here; every value is a bound parameter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from dbkeeper.archive import Archive
from dbkeeper.context import CancelToken
from dbkeeper.dialects.common import owner_groups
from dbkeeper.errors import TargetError
from dbkeeper.targets import Target, transaction
from dbkeeper.timeformats import TimeFormat, detect

_RANGE_BOUND = re.compile(r"^FOR VALUES FROM \((.+)\) TO \((.+)\)$")
# SQLSTATEs of a statement that gave up: lock_not_available, query_canceled.
_GAVE_UP = ("55P03", "57014")
_INTEGER_TYPES = ("smallint", "integer", "bigint", "numeric", "double precision", "real")


@contextmanager
def connect(
    target: Target, application_name: str, token: CancelToken | None = None
) -> Iterator[Connection]:
    """A connection outside any transaction (VACUUM and CONCURRENTLY need that), named in
    ``pg_stat_activity`` so a DBA sees which job a session belongs to; with ``token``,
    cancelling it cancels the statement running."""
    with target.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(
            text("SELECT set_config('application_name', :name, false)"),
            {"name": application_name[:63]},
        )
        if token is None:
            yield conn
            return
        with token.interrupting(canceller(conn)):
            yield conn


def canceller(conn: Connection) -> Callable[[], None]:
    """Cancels the statement running on ``conn``; safe to call from another thread."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise TargetError("the PostgreSQL connection is closed")
    cancel: Callable[[], None] = getattr(raw, "cancel_safe", raw.cancel)
    return cancel


def gave_up(exc: DBAPIError) -> bool:
    """True when a statement hit lock_timeout or statement_timeout (or was cancelled)."""
    return getattr(exc.orig, "sqlstate", None) in _GAVE_UP


def _milliseconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() * 1000))


def set_local_timeouts(conn: Connection, lock_timeout: timedelta, statement: timedelta) -> None:
    """Bound this transaction's waits; ``set_config`` takes the values as parameters."""
    conn.execute(
        text(
            "SELECT set_config('lock_timeout', :lock, true), "
            "set_config('statement_timeout', :statement, true)"
        ),
        {"lock": f"{_milliseconds(lock_timeout)}ms", "statement": f"{_milliseconds(statement)}ms"},
    )


# -- time columns ----------------------------------------------------------------------


@dataclass(frozen=True)
class TimeColumn:
    """How a PostgreSQL column stores time, and how a cutoff is bound against it."""

    name: str
    kind: str  # timestamptz | timestamp | date | unix_s | unix_ms
    sql_type: str
    zone: ZoneInfo

    def cutoff(self, cutoff: datetime) -> object:
        if self.kind == "timestamptz":
            return cutoff
        if self.kind == "timestamp":  # local wall time in the column's zone
            return cutoff.astimezone(self.zone).replace(tzinfo=None)
        if self.kind == "date":  # only days that ended before the cutoff go
            return cutoff.astimezone(self.zone).date()
        return TimeFormat(self.kind).cutoff_value(cutoff)

    def to_datetime(self, value: object) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=self.zone)
            return value.astimezone(UTC)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=self.zone).astimezone(UTC)
        if isinstance(value, int | float):
            return TimeFormat(self.kind).to_datetime(value)
        return TimeFormat(self.kind).to_datetime(float(str(value)))


def time_column(
    target: Target, conn: Connection, table: str, column: str, declared: str, zone: ZoneInfo
) -> TimeColumn:
    """Classify the column from its catalogue type (and, for numbers, its largest value)."""
    sql_type = str(
        conn.execute(
            text(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(:table) AND a.attname = :column"
            ),
            {"table": target.quote(table), "column": column},
        ).scalar_one()
    )
    where = f"column {column!r} of table {table!r}"
    numeric = sql_type.startswith(_INTEGER_TYPES)
    if sql_type.startswith("timestamp") and "with time zone" in sql_type:
        kind = "timestamptz"
    elif sql_type.startswith("timestamp"):
        kind = "timestamp"
    elif sql_type == "date":
        kind = "date"
    elif numeric and declared in ("unix_s", "unix_ms"):
        kind = declared
    elif numeric:
        largest = conn.execute(
            text(f"SELECT max(abs({target.quote(column)})) FROM {target.quote(table)}")
        ).scalar()
        probe = TimeFormat.UNIX_SECONDS if largest is None else detect([float(largest)], where)
        kind = probe.value
    else:
        raise TargetError(
            f"{where} is {sql_type}; purge needs timestamptz, timestamp, date "
            "or a number of Unix seconds/milliseconds"
        )
    fits = declared in ("auto", kind) or (declared == "iso" and not numeric)
    if not fits:
        raise TargetError(f"{where} is {sql_type}, which does not fit column_format={declared!r}")
    return TimeColumn(column, kind, sql_type, zone)


# -- partitions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    name: str
    bounds: str
    before_cutoff: bool  # every row it can hold lies before the cutoff


def partitions(
    target: Target, conn: Connection, table: str, column: TimeColumn, cutoff: datetime
) -> list[Partition] | None:
    """The partitions of a range-partitioned table; None when the table is not partitioned."""
    quoted = target.quote(table)
    strategy = conn.execute(
        text("SELECT partstrat FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"),
        {"t": quoted},
    ).scalar()
    if strategy is None:
        return None
    key = conn.execute(
        text("SELECT pg_get_partkeydef(to_regclass(:t))"), {"t": quoted}
    ).scalar_one()
    by_column = strategy == "r" and str(key) in (
        f"RANGE ({column.name})",
        f"RANGE ({target.quote(column.name)})",
    )
    found = []
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t) ORDER BY c.relname"
        ),
        {"t": quoted},
    ).all()
    for name, bounds in rows:
        match = _RANGE_BOUND.match(str(bounds))
        before = False
        if by_column and match and match.group(2) != "MAXVALUE":
            upper = match.group(2).strip("'")
            before = bool(
                conn.execute(
                    text(f"SELECT CAST(:upper AS {column.sql_type}) <= :cutoff"),
                    {"upper": upper, "cutoff": column.cutoff(cutoff)},
                ).scalar()
            )
        found.append(Partition(str(name), str(bounds), before))
    return found


def leaf_partitions(
    target: Target, conn: Connection, table: str, excluding: list[str]
) -> list[str]:
    """The leaf partitions holding the rows, leaving out those under ``excluding``."""
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_partition_tree(to_regclass(:t)) AS tree "
            "JOIN pg_class c ON c.oid = tree.relid WHERE tree.isleaf AND NOT EXISTS ("
            "  SELECT 1 FROM pg_partition_ancestors(tree.relid) AS up "
            "  JOIN pg_class a ON a.oid = up.relid WHERE a.relname = ANY(:excluding)"
            ") ORDER BY c.relname"
        ),
        {"t": target.quote(table), "excluding": excluding},
    ).scalars()
    return [str(name) for name in names]


def drop_partition(
    target: Target, conn: Connection, parent: str, partition: str, lock_timeout: timedelta
) -> None:
    """Detach then drop a partition in one transaction that waits at most ``lock_timeout``."""
    with transaction(conn):
        set_local_timeouts(conn, lock_timeout, timedelta(minutes=5))
        conn.execute(
            text(f"ALTER TABLE {target.quote(parent)} DETACH PARTITION {target.quote(partition)}")
        )
        conn.execute(text(f"DROP TABLE {target.quote(partition)}"))


# -- purge windows ---------------------------------------------------------------------


@dataclass(frozen=True)
class Walk:
    """A walk over a heap: the rows it is to delete, and its blocks."""

    rows: int
    blocks: int


class Window(NamedTuple):
    """What one window's transaction did: rows deleted, and whether another session was
    waiting for its locks when it was about to commit."""

    rows: int
    blocking: bool


def blocking_others(conn: Connection) -> bool:
    """Whether another session waits for a lock this transaction holds. Asked just before
    the commit: whoever waits for our row locks waits until then, so none is missed."""
    found = conn.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
            "WHERE pg_backend_pid() = ANY (pg_blocking_pids(pid)))"
        )
    ).scalar_one()
    return bool(found)


class PurgeQuery:
    """The SQL of one purge on one heap table: which rows, block window by block window."""

    def __init__(
        self,
        target: Target,
        table: str,
        column: TimeColumn,
        cutoff: datetime,
        filters: Mapping[str, object],
        key: ArchiveKey | None = None,
    ) -> None:
        self.table = target.quote(table)
        self.key = key
        self.column = target.quote(column.name)
        self.time = column
        self.params: dict[str, Any] = {"cutoff": column.cutoff(cutoff)}
        condition = f"{self.column} < :cutoff"
        for index, (name, value) in enumerate(filters.items()):
            quoted = target.quote(name)
            if value is None:
                condition += f" AND {quoted} IS NULL"
            else:
                condition += f" AND {quoted} = :filter_{index}"
                self.params[f"filter_{index}"] = value
        self.condition = condition

    def plan(self, conn: Connection) -> Walk:
        """Exact count of the rows to delete, and the heap's blocks to walk for them.

        The walk goes from the first block and ends once the planned rows are gone (or at
        the last block): the lowest and highest blocks that hold them would cost a pass
        over every matching row, where the count reads only an index on the column."""
        rows = conn.execute(
            text(f"SELECT count(*) FROM {self.table} WHERE {self.condition}"), self.params
        ).scalar_one()
        blocks = conn.execute(
            text(
                "SELECT pg_relation_size(CAST(:table AS regclass)) "
                "/ current_setting('block_size')::bigint"
            ),
            {"table": self.table},
        ).scalar_one()
        return Walk(int(rows), int(blocks))

    def edges(self, conn: Connection) -> tuple[datetime | None, datetime | None]:
        """The oldest and newest times of the rows to delete."""
        oldest, newest = conn.execute(
            text(
                f"SELECT min({self.column}), max({self.column}) FROM {self.table} "
                f"WHERE {self.condition}"
            ),
            self.params,
        ).one()
        return self.time.to_datetime(oldest), self.time.to_datetime(newest)

    def any_kept(self, conn: Connection) -> bool:
        """Whether a row at or after the cutoff exists: then the purge certainly keeps some
        rows. Asked as the newest time, which an index on the column answers at once
        (an EXISTS may be planned as a scan that meets the old rows first)."""
        found = conn.execute(
            text(f"SELECT max({self.column}) >= :cutoff FROM {self.table}"), self.params
        ).scalar_one()
        return bool(found)

    def any_left(self, conn: Connection) -> bool:
        """Whether any row still matches (cheap: stops at the first one)."""
        found = conn.execute(
            text(f"SELECT EXISTS (SELECT 1 FROM {self.table} WHERE {self.condition})"),
            self.params,
        ).scalar_one()
        return bool(found)

    def owners(self, conn: Connection, owner: str, limit: int) -> list[dict[str, Any]]:
        """Matching rows grouped by ``owner`` (a quoted column): count and oldest time."""
        return owner_groups(
            conn,
            self.table,
            self.condition,
            self.params,
            owner,
            self.column,
            self.time.to_datetime,
            limit,
        )

    def samples(self, conn: Connection, limit: int) -> list[dict[str, Any]]:
        result = conn.execute(
            text(
                f"SELECT * FROM {self.table} WHERE {self.condition} "
                f"ORDER BY {self.column} LIMIT :limit"
            ),
            {**self.params, "limit": limit},
        )
        return [dict(row._mapping) for row in result]

    def delete_window(
        self,
        conn: Connection,
        low: int,
        high: int,
        lock_timeout: timedelta,
        statement: timedelta,
        skip_locked: bool,
    ) -> Window:
        """Delete matching rows in heap blocks [low, high) in one short transaction.

        With ``skip_locked``, rows another session has locked are skipped, not waited
        for (at the price of locking each row before deleting it).
        """
        window = f"ctid >= CAST(:low AS tid) AND ctid < CAST(:high AS tid) AND {self.condition}"
        if skip_locked:
            sql = (
                f"DELETE FROM {self.table} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {self.table} WHERE {window} FOR UPDATE SKIP LOCKED))"
            )
        else:
            sql = f"DELETE FROM {self.table} WHERE {window}"
        with transaction(conn):
            set_local_timeouts(conn, lock_timeout, statement)
            result = conn.execute(
                text(sql), {**self.params, "low": f"({low},0)", "high": f"({high},0)"}
            )
            blocking = blocking_others(conn)
        return Window(int(result.rowcount), blocking)

    def archive_window(
        self,
        conn: Connection,
        window: tuple[int, int],
        timeouts: tuple[timedelta, timedelta],
        skip_locked: bool,
        archive: Archive,
    ) -> Window:
        """Like ``delete_window``, archiving the rows first: they are locked, read and
        durably archived in the transaction that deletes them, so none can change between."""
        low, high = window
        skip = " SKIP LOCKED" if skip_locked else ""
        assert self.key is not None
        key = self.key.expression
        with transaction(conn):
            set_local_timeouts(conn, *timeouts)
            cursor = conn.execute(
                text(
                    f"SELECT ctid::text, {key}, * FROM {self.table} "
                    "WHERE ctid >= CAST(:low AS tid) AND ctid < CAST(:high AS tid) "
                    f"AND {self.condition} ORDER BY {key} FOR UPDATE{skip}"
                ),
                {**self.params, "low": f"({low},0)", "high": f"({high},0)"},
            )
            columns = list(cursor.keys())[2:]
            rows = cursor.all()
            if not rows:
                return Window(0, False)
            batch = archive.write(columns, [row[2:] for row in rows], [row[1] for row in rows])
            deleted = conn.execute(
                text(f"DELETE FROM {self.table} WHERE ctid = ANY(CAST(:ctids AS tid[]))"),
                {"ctids": [row[0] for row in rows]},
            ).rowcount
            if deleted != batch.rows:
                raise TargetError(f"archived {batch.rows} rows but the delete matched {deleted}")
            blocking = blocking_others(conn)
        archive.done(batch)
        return Window(int(deleted), blocking)


@dataclass(frozen=True)
class ArchiveKey:
    """How archive batches name their rows: a single integer primary key as itself (stored
    as runs), any other primary key as PostgreSQL's text of the key's row value."""

    columns: tuple[str, ...]
    expression: str
    integer: bool

    @property
    def name(self) -> str:
        return ",".join(self.columns)


def archive_key(target: Target, conn: Connection, table: str) -> ArchiveKey:
    """The primary key archives identify rows by (needed to settle interrupted batches)."""
    found = conn.execute(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = to_regclass(:t) AND i.indisprimary "
            "ORDER BY array_position(i.indkey::int2[], a.attnum)"
        ),
        {"t": target.quote(table)},
    ).all()
    if not found:
        raise TargetError(
            f"table {table!r} has no primary key; purge with archive needs one to tell, "
            "after a crash, which archived rows were deleted"
        )
    columns = tuple(str(name) for name, _ in found)
    quoted = ", ".join(target.quote(column) for column in columns)
    if len(found) == 1 and str(found[0][1]) in ("smallint", "integer", "bigint"):
        return ArchiveKey(columns, quoted, True)
    return ArchiveKey(columns, f"ROW({quoted})::text", False)


def keys_present(
    target: Target, conn: Connection, table: str, key: ArchiveKey, keys: list[Any]
) -> int:
    """How many of an archive batch's keys (``[first, last]`` runs, or texts) are in the table."""
    found = 0
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        params: dict[str, Any]
        if key.integer:
            where = " OR ".join(
                f"{key.expression} BETWEEN :a{i} AND :b{i}" for i in range(len(chunk))
            )
            params = {f"a{i}": run[0] for i, run in enumerate(chunk)}
            params.update({f"b{i}": run[1] for i, run in enumerate(chunk)})
        else:
            where = f"{key.expression} = ANY(:keys)"
            params = {"keys": chunk}
        found += int(
            conn.execute(
                text(f"SELECT count(*) FROM {target.quote(table)} WHERE {where}"), params
            ).scalar_one()
        )
    return found


def relation_rows(target: Target, conn: Connection, relation: str) -> int:
    return int(conn.execute(text(f"SELECT count(*) FROM {target.quote(relation)}")).scalar_one())


# -- vacuum and optimize ---------------------------------------------------------------


def database_size(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


def tables_size(target: Target, conn: Connection, tables: list[str]) -> int:
    """Total size (heap, indexes, TOAST) of the tables, or of the database when none given."""
    if not tables:
        return database_size(conn)
    return sum(
        int(
            conn.execute(
                text("SELECT pg_total_relation_size(to_regclass(:t))"), {"t": target.quote(t)}
            ).scalar_one()
        )
        for t in tables
    )


def vacuum(target: Target, conn: Connection, tables: list[str], full: bool) -> dict[str, Any]:
    """VACUUM (ANALYZE) the given tables, or the whole database; sizes from the catalogue."""
    options = "FULL, ANALYZE" if full else "ANALYZE"
    before = tables_size(target, conn, tables)
    relations = [target.quote(table) for table in tables] or [""]
    for relation in relations:
        conn.execute(text(f"VACUUM ({options}) {relation}"))
    after = tables_size(target, conn, tables)
    saved = before - after
    return {
        "mode": "full" if full else "standard",
        "tables": tables or "all",
        "size_before": before,
        "size_after": after,
        "bytes_saved": saved,
        "percent_saved": round(100 * saved / before, 2) if before else 0.0,
    }


# A coarse B-tree bloat estimate: an index entry of a table row costs about 40 bytes
# on a packed leaf page; what an index holds beyond that is counted as bloat.
_INDEX_BLOAT = """
SELECT ci.relname AS index, ct.relname AS table, pg_relation_size(ci.oid) AS bytes,
       GREATEST(0, 1 - (GREATEST(ct.reltuples, 0) * 40 + 8192)
                       / NULLIF(pg_relation_size(ci.oid), 0)) AS bloat_ratio
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class ct ON ct.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ci.relnamespace
JOIN pg_am am ON am.oid = ci.relam
WHERE n.nspname = current_schema() AND am.amname = 'btree' AND ci.relkind = 'i'
ORDER BY bloat_ratio DESC NULLS LAST
"""


def index_bloat(conn: Connection) -> list[dict[str, Any]]:
    """Each B-tree index of the current schema with its estimated bloat in percent."""
    return [
        {
            "index": str(row["index"]),
            "table": str(row["table"]),
            "bytes": int(row["bytes"]),
            "bloat_percent": round(100 * float(row["bloat_ratio"] or 0), 1),
        }
        for row in conn.execute(text(_INDEX_BLOAT)).mappings()
    ]


def analyze(conn: Connection) -> None:
    conn.execute(text("ANALYZE"))


def reindex_concurrently(target: Target, conn: Connection, index: str) -> None:
    conn.execute(text(f"REINDEX INDEX CONCURRENTLY {target.quote(index)}"))


# -- health ----------------------------------------------------------------------------

_HEALTH_TABLES = """
SELECT c.relname AS table, GREATEST(c.reltuples, 0)::bigint AS estimated_rows,
       pg_total_relation_size(c.oid) AS bytes,
       s.n_live_tup AS live, s.n_dead_tup AS dead,
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY pg_total_relation_size(c.oid) DESC, c.relname
"""

_HEALTH_SESSIONS = """
SELECT count(*) FILTER (WHERE state = 'active' AND pid <> pg_backend_pid()
           AND now() - query_start > make_interval(secs => :long_seconds)) AS long_running,
       count(*) FILTER (WHERE state LIKE 'idle in transaction%'
           AND now() - state_change > make_interval(secs => :idle_seconds)) AS idle_in_transaction,
       count(*) AS connections,
       current_setting('max_connections')::int AS max_connections
FROM pg_stat_activity WHERE backend_type = 'client backend'
"""

_HEALTH_DATABASE = """
SELECT pg_database_size(d.datname) AS size_bytes, age(d.datfrozenxid) AS xid_age,
       s.blks_hit, s.blks_read
FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid
WHERE d.datname = current_database()
"""

_HEALTH_SLOTS = """
SELECT slot_name, active,
       COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint AS retained_bytes
FROM pg_replication_slots
"""


def _latest(*moments: datetime | None) -> datetime | None:
    return max((moment for moment in moments if moment is not None), default=None)


def health(conn: Connection, long_running: timedelta, idle: timedelta) -> dict[str, Any]:
    """The database's size, sessions, cache, wraparound age, slots and per-table figures."""
    database = conn.execute(text(_HEALTH_DATABASE)).mappings().one()
    sessions = (
        conn.execute(
            text(_HEALTH_SESSIONS),
            {"long_seconds": long_running.total_seconds(), "idle_seconds": idle.total_seconds()},
        )
        .mappings()
        .one()
    )
    tables = []
    for row in conn.execute(text(_HEALTH_TABLES)).mappings():
        live, dead = int(row["live"] or 0), int(row["dead"] or 0)
        tables.append(
            {
                "table": str(row["table"]),
                "rows": live if row["live"] is not None else int(row["estimated_rows"]),
                "bytes": int(row["bytes"]),
                "dead_rows": dead,
                "dead_percent": round(100 * dead / (live + dead), 2) if live + dead else 0.0,
                "last_vacuum": _latest(row["last_vacuum"], row["last_autovacuum"]),
                "last_analyze": _latest(row["last_analyze"], row["last_autoanalyze"]),
            }
        )
    hits, reads = int(database["blks_hit"] or 0), int(database["blks_read"] or 0)
    slots = [
        {
            "slot": str(row["slot_name"]),
            "active": bool(row["active"]),
            "retained_bytes": int(row["retained_bytes"]),
        }
        for row in conn.execute(text(_HEALTH_SLOTS)).mappings()
    ]
    return {
        "size_bytes": int(database["size_bytes"]),
        "xid_age": int(database["xid_age"]),
        "cache_hit_percent": round(100 * hits / (hits + reads), 2) if hits + reads else None,
        "connections": int(sessions["connections"]),
        "max_connections": int(sessions["max_connections"]),
        "long_running_queries": int(sessions["long_running"]),
        "idle_in_transaction": int(sessions["idle_in_transaction"]),
        "replication_slots": slots,
        "tables": tables,
    }
