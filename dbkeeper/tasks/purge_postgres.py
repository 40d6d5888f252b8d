"""Purge on PostgreSQL: drop partitions that lie wholly before the cutoff, then delete
the remaining old rows in short, lock-bounded batches walking the heap by block."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from dbkeeper.archive import Archive
from dbkeeper.context import RunContext
from dbkeeper.dialects import postgres as pg
from dbkeeper.errors import Cancelled, RefusedError, TargetError
from dbkeeper.pacing import Pacer
from dbkeeper.schedule import load_timezone

if TYPE_CHECKING:
    from dbkeeper.tasks.purge import PurgeJob

# Owners listed in a preview or a warning, the most rows first.
MAX_OWNERS = 1000
# Block windows start small and grow while batches stay under TARGET seconds (less when
# lock_timeout is short: an application statement may wait for a whole batch). Once an
# application statement was found waiting for a window's locks, windows shrink to about
# SHARED_TARGET seconds until none has waited for a while.
FIRST_WIDTH = 32
MAX_WIDTH = 65_536
TARGET = 0.2
SHARED_TARGET = 0.01
# Give up on a table after this many consecutive batches that could not get their locks.
MAX_GIVE_UPS = 20
# How long a plain delete waits for a lock before the walk switches to skipping locked rows.
FAST_LOCK_WAIT = timedelta(milliseconds=50)
# Walks over a table per run: the first, then sweeps (after growing pauses) for rows
# that were locked or moved while it ran. What is still left waits for the next run.
MAX_SWEEPS = 5


@dataclass
class Plan:
    """What one purge will do: whole partitions to drop and heap relations to walk."""

    query: dict[str, pg.PurgeQuery]  # relation -> query
    walks: dict[str, pg.Walk]  # relation -> walk
    drops: dict[str, int]  # partition -> rows
    whole: pg.PurgeQuery  # over the whole table, partitions to drop included
    column: pg.TimeColumn

    @property
    def rows(self) -> int:
        return sum(self.drops.values()) + sum(walk.rows for walk in self.walks.values())


def make_plan(job: PurgeJob, ctx: RunContext, conn: Connection) -> Plan:
    target = ctx.target()
    job.check(ctx)
    zone = load_timezone(job.column_timezone)
    column = pg.time_column(target, conn, job.table, job.column, job.column_format, zone)
    cutoff = job.cutoff(ctx.now)
    parts = pg.partitions(target, conn, job.table, column, cutoff)
    drops: dict[str, int] = {}
    relations = [job.table]
    key = pg.archive_key(target, conn, job.table) if job.archive else None
    if parts is not None:
        # A filtered purge keeps rows that do not match, so it never drops a partition;
        # an archived one empties it batch by batch instead.
        for part in parts:
            if part.before_cutoff and not job.where and not job.archive:
                drops[part.name] = pg.relation_rows(target, conn, part.name)
        relations = pg.leaf_partitions(target, conn, job.table, excluding=list(drops))
    queries = {
        relation: pg.PurgeQuery(target, relation, column, cutoff, job.where, key)
        for relation in relations
    }
    walks = {relation: query.plan(conn) for relation, query in queries.items()}
    whole = pg.PurgeQuery(target, job.table, column, cutoff, job.where)
    return Plan(queries, walks, drops, whole, column)


def preview(job: PurgeJob, ctx: RunContext) -> dict[str, Any]:
    target = ctx.target()
    with pg.connect(target, ctx.application_name) as conn:
        plan = make_plan(job, ctx, conn)
        samples: list[dict[str, Any]] = []
        for query in plan.query.values():
            if len(samples) < job.sample_rows:
                samples += query.samples(conn, job.sample_rows - len(samples))
        # Over the whole table: rows of partitions to be dropped count too.
        oldest, newest = plan.whole.edges(conn)
        owners = None
        if job.owner_column:
            owners = plan.whole.owners(conn, target.quote(job.owner_column), MAX_OWNERS)
        table_rows = pg.relation_rows(target, conn, job.table)
    return {
        "rows": plan.rows,
        "table_rows": table_rows,
        "cutoff": job.cutoff(ctx.now),
        "oldest": oldest,
        "newest": newest,
        "format": plan.column.kind,
        "drop_partitions": plan.drops,
        "samples": samples,
        "would_refuse": job.refusal(plan.rows, table_rows),
        "archive": job.archive,
        "owners": owners,
    }


def run(job: PurgeJob, ctx: RunContext) -> tuple[int, dict[str, Any]]:
    """Delete what the plan says; returns rows deleted and the result to record."""
    target = ctx.target()
    with pg.connect(target, ctx.application_name, ctx.token) as conn:
        archive, recovered = None, None
        if job.archive:
            key = pg.archive_key(target, conn, job.table)
            archive = job.archive_for(ctx, key.name)
            lookup = partial(pg.keys_present, target, conn, job.table, key)
            recovered = archive.recover(lookup)
        plan = make_plan(job, ctx, conn)
        result: dict[str, Any] = {
            "cutoff": job.cutoff(ctx.now).isoformat(),
            "format": plan.column.kind,
            "planned": plan.rows,
            "partitions_dropped": [],
            "batches": 0,
        }
        if archive is not None:
            result["archive_recovery"] = recovered
        # The guard counts the table only when no row at or after the cutoff shows at
        # once (through an index on the column) that some rows stay.
        if not plan.whole.any_kept(conn):
            refusal = job.refusal(plan.rows, pg.relation_rows(target, conn, job.table))
            if refusal:
                raise RefusedError(refusal)
        pacer = Pacer(
            width=FIRST_WIDTH,
            minimum=1,
            maximum=MAX_WIDTH,
            alone_target=min(TARGET, job.lock_timeout.total_seconds() / 4),
            shared_target=SHARED_TARGET,
        )
        purge = Purge(job, ctx, conn, plan.rows, result, archive, pacer)
        for partition, rows in plan.drops.items():
            drop = partial(pg.drop_partition, target, conn, job.table, partition)
            _retrying(ctx, f"dropping partition {partition!r}", drop, job.lock_timeout)
            purge.deleted += rows
            result["partitions_dropped"].append(partition)
            ctx.progress(100 * purge.deleted / max(plan.rows, 1), purge.deleted)
        for relation, query in plan.query.items():
            purge.sweep(query, plan.walks[relation])
        result["deleted"] = purge.deleted
        if archive is not None:
            result.update(archived=archive.written, archive_files=sorted(archive.files))
    return purge.deleted, result


@dataclass
class Purge:
    """One run's walk over the relations left after partition drops."""

    job: PurgeJob
    ctx: RunContext
    conn: Connection
    planned: int
    result: dict[str, Any]
    archive: Archive | None
    pacer: Pacer
    deleted: int = 0

    def sweep(self, query: pg.PurgeQuery, walk: pg.Walk) -> None:
        """Walk the relation, then again while rows are left: rows locked by the
        application were skipped, and rows it updated may have moved to blocks walked.
        A walk that deleted every planned row without skipping any needs no look."""
        for sweep in range(MAX_SWEEPS):
            if sweep:
                self.result["sweeps"] = sweep
                if self.ctx.token.wait(min(0.5 * 2 ** (sweep - 1), 5.0)):
                    raise Cancelled(self.ctx.token.reason)
            if self.walk(query, walk) or not query.any_left(self.conn):
                return
            walk = query.plan(self.conn)
        self.result["left_for_next_run"] = self.result.get("left_for_next_run", 0) + walk.rows

    def walk(self, query: pg.PurgeQuery, walk: pg.Walk) -> bool:
        """Delete block window by block window, each window one bounded transaction, until
        the walk's rows are gone or its last block is passed. True when it deleted as many
        rows as planned and skipped no locked row."""
        if not walk.rows:
            return True
        job, ctx, result = self.job, self.ctx, self.result
        low, last, before = 0, walk.blocks, self.deleted
        pacer = self.pacer
        give_ups = 0
        longest = result.get("longest_batch_ms", 0.0)
        # Plain deletes wait at most FAST_LOCK_WAIT for a lock; once one had to give up,
        # the table is contended and windows skip locked rows (sweeps come back for them).
        skip_locked = bool(result.get("skip_locked"))
        while low <= last and self.deleted - before < walk.rows:
            ctx.check_cancelled()
            high = min(low + pacer.width, last + 1)
            began = time.monotonic()
            wait = job.lock_timeout if skip_locked else min(job.lock_timeout, FAST_LOCK_WAIT)
            try:
                if self.archive is None:
                    window = query.delete_window(
                        self.conn, low, high, wait, job.statement_timeout, skip_locked
                    )
                else:
                    window = query.archive_window(
                        self.conn,
                        (low, high),
                        (wait, job.statement_timeout),
                        skip_locked,
                        self.archive,
                    )
            except DBAPIError as exc:
                ctx.check_cancelled()
                if not pg.gave_up(exc):
                    raise
                if not skip_locked:
                    skip_locked = result["skip_locked"] = True
                    continue
                give_ups += 1
                if give_ups >= MAX_GIVE_UPS:
                    raise TargetError(
                        f"table {job.table!r}: {give_ups} batches in a row could not get "
                        f"their locks within lock_timeout={job.lock_timeout.total_seconds():g}s "
                        "or finish within statement_timeout; another session holds them"
                    ) from None
                pacer.width = max(pacer.minimum, pacer.width // 2)
                if ctx.token.wait(min(0.1 * 2**give_ups, 5.0)):
                    raise Cancelled(ctx.token.reason) from None
                continue
            elapsed = time.monotonic() - began
            self.deleted += window.rows
            give_ups = 0
            longest = max(longest, elapsed * 1000)
            result["batches"] += 1
            low = high
            if window.blocking:
                pacer.others_wrote()
                result["waited_for"] = result.get("waited_for", 0) + 1
            # Row locks need no pause after a window: whoever waited for one goes on at
            # the commit. Only the width follows the pacer.
            pacer.record(elapsed)
            ctx.progress(100 * self.deleted / max(self.planned, 1), self.deleted)
        result["longest_batch_ms"] = round(longest, 1)
        return self.deleted - before >= walk.rows and not skip_locked


def _retrying(
    ctx: RunContext, what: str, step: Callable[[timedelta], None], lock_timeout: timedelta
) -> None:
    """Run a lock-bounded step, backing off while another session holds the locks."""
    for attempt in range(1, MAX_GIVE_UPS + 1):
        ctx.check_cancelled()
        try:
            step(lock_timeout)
            return
        except DBAPIError as exc:
            if not pg.gave_up(exc):
                raise
            if ctx.token.wait(min(0.1 * 2**attempt, 5.0)):
                raise Cancelled(ctx.token.reason) from None
    raise TargetError(f"{what}: could not get the locks it needs; another session holds them")
