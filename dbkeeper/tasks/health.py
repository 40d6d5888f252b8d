"""``health``: integrity, sizes, row counts and page figures, judged and kept for trends."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from dbkeeper.context import Outcome, RunContext
from dbkeeper.dialects import postgres as pg
from dbkeeper.dialects import sqlite as sqlite_sql
from dbkeeper.jobspec import Duration, JobSpec, Size
from dbkeeper.units import format_duration, format_size

TREND_WINDOW = timedelta(days=30)
STATUS_ORDER = {"ok": 0, "warning": 1, "critical": 2}


class HealthJob(JobSpec):
    task: Literal["health"]
    database: str
    integrity: Literal["quick", "full", "off"] = "quick"
    warn_size: Size | None = None
    critical_size: Size | None = None
    warn_freelist_percent: float = Field(25.0, ge=0, le=100)
    disk_warn_days: float = Field(30.0, gt=0)
    disk_critical_days: float = Field(7.0, gt=0)
    # PostgreSQL only.
    warn_dead_percent: float = Field(20.0, ge=0, le=100)
    warn_xid_age: int = Field(500_000_000, gt=0)
    critical_xid_age: int = Field(1_500_000_000, gt=0)
    warn_connections_percent: float = Field(80.0, gt=0, le=100)
    long_running: Duration = timedelta(minutes=5)
    idle_in_transaction: Duration = timedelta(minutes=5)
    warn_slot_retained: Size = 1_000_000_000

    def check(self, ctx: RunContext) -> None:
        ctx.target().tables()

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        return {"measures": ["integrity", "sizes", "pages", "tables", "disk"], "changes": []}

    def run(self, ctx: RunContext) -> Outcome:
        report = self.measure(ctx)
        if ctx.store is not None:
            history = ctx.store.health_sizes(self.database, ctx.now - TREND_WINDOW)
            report.update(forecast(history, report, self.critical_size, ctx.now))
        report.update(judge(self, report))
        if ctx.store is not None:
            ctx.store.add_health_report(self.database, ctx.run_id, ctx.now, report)
        summary = f"{report['status']}: {format_size(report['size_bytes'])}"
        if report["problems"]:
            summary += " - " + "; ".join(report["problems"])
        return Outcome(None, report, summary)

    def measure(self, ctx: RunContext) -> dict[str, Any]:
        target = ctx.target()
        if target.backend == "postgresql":
            with pg.connect(target, ctx.application_name, ctx.token) as conn:
                figures = pg.health(conn, self.long_running, self.idle_in_transaction)
            return {"database": self.database, "integrity": [], **figures}
        path = target.sqlite_path
        with sqlite_sql.connect(target) as conn:
            raw = sqlite_sql.driver(conn)
            with ctx.token.interrupting(raw.interrupt):
                checks = (
                    []
                    if self.integrity == "off"
                    else sqlite_sql.integrity(conn, self.integrity == "full")
                )
                pages = sqlite_sql.page_stats(conn)
                tables = sqlite_sql.table_stats(target, conn)
        ctx.check_cancelled()
        file_bytes, wal_bytes = sqlite_sql.file_size(path), sqlite_sql.wal_size(path)
        disk = shutil.disk_usage(path.parent)
        return {
            "database": self.database,
            "integrity": checks,
            "size_bytes": file_bytes + wal_bytes,
            "file_bytes": file_bytes,
            "wal_bytes": wal_bytes,
            **pages,
            "freelist_percent": round(100 * pages["freelist_count"] / pages["page_count"], 2)
            if pages["page_count"]
            else 0.0,
            "tables": tables,
            "disk_free_bytes": disk.free,
            "disk_total_bytes": disk.total,
        }


def growth_per_day(points: list[tuple[datetime, int]]) -> float | None:
    """Least-squares slope of size over time, in bytes per day; None without a span of an hour."""
    if len(points) < 2:
        return None
    start = min(moment for moment, _ in points)
    xs = [(moment - start).total_seconds() / 86400 for moment, _ in points]
    if max(xs) < 1 / 24:
        return None
    ys = [float(size) for _, size in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def forecast(
    history: list[tuple[datetime, int]],
    report: dict[str, Any],
    critical_size: int | None,
    now: datetime,
) -> dict[str, Any]:
    """Growth per day over the stored reports plus this one, and when limits are reached."""
    growth = growth_per_day([*history, (now, report["size_bytes"])])
    result: dict[str, Any] = {
        "growth_bytes_per_day": round(growth) if growth is not None else None,
        "days_until_disk_full": None,
        "days_until_critical_size": None,
    }
    if growth and growth > 0:
        if report.get("disk_free_bytes") is not None:
            result["days_until_disk_full"] = round(report["disk_free_bytes"] / growth, 1)
        if critical_size and report["size_bytes"] < critical_size:
            result["days_until_critical_size"] = round(
                (critical_size - report["size_bytes"]) / growth, 1
            )
    return result


def judge(job: HealthJob, report: dict[str, Any]) -> dict[str, Any]:
    problems: list[tuple[str, str]] = []
    if report["integrity"] and report["integrity"] != ["ok"]:
        problems.append(
            ("critical", "integrity check failed: " + "; ".join(report["integrity"][:5]))
        )
    size = report["size_bytes"]
    if job.critical_size is not None and size >= job.critical_size:
        problems.append(
            ("critical", f"size {format_size(size)} >= {format_size(job.critical_size)}")
        )
    elif job.warn_size is not None and size >= job.warn_size:
        problems.append(("warning", f"size {format_size(size)} >= {format_size(job.warn_size)}"))
    if report.get("freelist_count") and report["freelist_percent"] >= job.warn_freelist_percent:
        problems.append(
            (
                "warning",
                f"{report['freelist_percent']}% of pages are free; a vacuum would reclaim "
                f"{format_size(report['freelist_count'] * report['page_size'])}",
            )
        )
    days_full = report.get("days_until_disk_full")
    if days_full is not None:
        if days_full < job.disk_critical_days:
            problems.append(
                ("critical", f"at the current growth the disk fills in ~{days_full} days")
            )
        elif days_full < job.disk_warn_days:
            problems.append(
                ("warning", f"at the current growth the disk fills in ~{days_full} days")
            )
    days_size = report.get("days_until_critical_size")
    if days_size is not None and days_size < job.disk_warn_days:
        problems.append(
            (
                "warning",
                f"at the current growth the database reaches "
                f"{format_size(job.critical_size or 0)} in ~{days_size} days",
            )
        )
    if "xid_age" in report:
        problems += _postgres_problems(job, report)
    status = max((level for level, _ in problems), key=STATUS_ORDER.__getitem__, default="ok")
    return {"status": status, "problems": [message for _, message in problems]}


def _postgres_problems(job: HealthJob, report: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    age = report["xid_age"]
    if age >= job.critical_xid_age or age >= job.warn_xid_age:
        level = "critical" if age >= job.critical_xid_age else "warning"
        problems.append(
            (level, f"transaction ID age {age:,} is heading for wraparound; VACUUM (FREEZE)")
        )
    used = 100 * report["connections"] / report["max_connections"]
    if used >= job.warn_connections_percent:
        problems.append(
            (
                "critical" if used >= 95 else "warning",
                f"{report['connections']} of {report['max_connections']} connections in use",
            )
        )
    if report["long_running_queries"]:
        problems.append(
            (
                "warning",
                f"{report['long_running_queries']} queries running for over "
                f"{format_duration(job.long_running)}",
            )
        )
    if report["idle_in_transaction"]:
        problems.append(
            (
                "warning",
                f"{report['idle_in_transaction']} sessions idle in a transaction for over "
                f"{format_duration(job.idle_in_transaction)} (they hold locks and stop vacuum)",
            )
        )
    for slot in report["replication_slots"]:
        if slot["retained_bytes"] >= job.warn_slot_retained:
            problems.append(
                (
                    "warning",
                    f"replication slot {slot['slot']!r} holds "
                    f"{format_size(slot['retained_bytes'])} of WAL"
                    + ("" if slot["active"] else " and is inactive"),
                )
            )
    for table in report["tables"]:
        if table["dead_rows"] >= 1000 and table["dead_percent"] >= job.warn_dead_percent:
            problems.append(
                (
                    "warning",
                    f"table {table['table']!r} is {table['dead_percent']}% dead rows; "
                    "autovacuum is not keeping up",
                )
            )
    return problems
