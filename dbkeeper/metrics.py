"""Prometheus metrics, read from the state store at scrape time, so every node serves the
same figures: runs by job and status, durations, rows, last success, job health,
database health figures, scheduler and nodes."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dbkeeper.jobhealth import Health
from dbkeeper.store import now

if TYPE_CHECKING:
    from dbkeeper.keeper import Keeper
    from dbkeeper.scheduler import Scheduler

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
_DATABASE_FIGURES = {
    "size_bytes": ("dbkeeper_database_size_bytes", "Database size at the latest health check"),
    "growth_bytes_per_day": ("dbkeeper_database_growth_bytes_per_day", "Growth trend"),
    "days_until_disk_full": (
        "dbkeeper_database_days_until_disk_full",
        "At the current growth, days until the disk is full",
    ),
    "disk_free_bytes": ("dbkeeper_disk_free_bytes", "Free disk space beside the database"),
}


class StoreCollector(Collector):
    def __init__(self, keeper: Keeper, scheduler: Scheduler | None) -> None:
        self.keeper, self.scheduler = keeper, scheduler

    def collect(self) -> Iterator[Metric]:
        store = self.keeper.store
        yield GaugeMetricFamily(
            "dbkeeper_scheduler_up",
            "1 while this process's scheduler loop turns",
            value=1 if self.scheduler is not None and self.scheduler.looping else 0,
        )
        lease = self.keeper.config.keeper.lease.total_seconds()
        moment = now()
        yield GaugeMetricFamily(
            "dbkeeper_nodes_alive",
            "Scheduler and tick processes whose lease is current",
            value=sum(node.alive(moment, lease) for node in store.nodes()),
        )

        runs = GaugeMetricFamily(
            "dbkeeper_runs", "Runs in the retained history", labels=["job", "status"]
        )
        rows = GaugeMetricFamily(
            "dbkeeper_rows_affected",
            "Rows affected by runs in the retained history",
            labels=["job"],
        )
        rows_by_job: dict[str, int] = defaultdict(int)
        for job, status, count, affected in store.run_totals():
            runs.add_metric([job, status], count)
            rows_by_job[job] += affected
        for job, affected in sorted(rows_by_job.items()):
            rows.add_metric([job], affected)
        yield runs
        yield rows
        yield self._durations()

        last = GaugeMetricFamily(
            "dbkeeper_last_success_timestamp_seconds",
            "When the job's last successful run finished (Unix time)",
            labels=["job"],
        )
        for job, moment_done in sorted(store.last_successes().items()):
            last.add_metric([job], moment_done.timestamp())
        yield last

        health = GaugeMetricFamily(
            "dbkeeper_job_health", "1 for the job's current health", labels=["job", "health"]
        )
        failures = GaugeMetricFamily(
            "dbkeeper_job_consecutive_failures", "Failed runs in a row", labels=["job"]
        )
        for row in self.keeper.overview(moment):
            for state in Health:
                health.add_metric([row["name"], state.value], int(row["health"] == state.value))
            failures.add_metric([row["name"]], row["consecutive_failures"])
        yield health
        yield failures
        yield from self._databases()

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "dbkeeper_run_duration_seconds", "How long finished runs took", labels=["job"]
        )
        by_job: dict[str, list[float]] = defaultdict(list)
        for job, seconds in self.keeper.store.durations():
            by_job[job].append(seconds)
        for job, values in sorted(by_job.items()):
            values.sort()
            buckets = [
                (str(bound), bisect.bisect_right(values, bound)) for bound in DURATION_BUCKETS
            ]
            buckets.append(("+Inf", len(values)))
            family.add_metric([job], buckets, sum_value=sum(values))
        return family

    def _databases(self) -> Iterator[Metric]:
        reports = self.keeper.store.latest_health()
        for key, (name, text) in _DATABASE_FIGURES.items():
            family = GaugeMetricFamily(name, text, labels=["database"])
            for database, (_, report) in sorted(reports.items()):
                if report.get(key) is not None:
                    family.add_metric([database], float(report[key]))
            yield family
        status = GaugeMetricFamily(
            "dbkeeper_database_health",
            "1 for the status of the latest health check",
            labels=["database", "status"],
        )
        for database, (_, report) in sorted(reports.items()):
            for state in ("ok", "warning", "critical"):
                status.add_metric([database, state], int(report.get("status") == state))
        yield status


def render_metrics(keeper: Keeper, scheduler: Scheduler | None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(keeper, scheduler))
    return generate_latest(registry)
