"""The Keeper: one object holding config, targets and state store, used by every interface.

The command line, the scheduler and Python callers all go through these
methods, so they can never disagree about what a job is or does.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from dbkeeper import chains as chain_module
from dbkeeper import config as config_module
from dbkeeper import jobhealth
from dbkeeper.catalog import Catalog, DefineMode
from dbkeeper.chains import Chains
from dbkeeper.config import Config, KeeperSettings, job_schedule
from dbkeeper.context import CancelToken, ProgressCallback, RunContext
from dbkeeper.errors import ConfigError, DbkeeperError, ScheduleError, UnknownJob
from dbkeeper.jobspec import JobSpec
from dbkeeper.models import JobChange, Pause, Run, RunStatus, Trigger
from dbkeeper.notify import Notifier
from dbkeeper.restore import restore_archive
from dbkeeper.runner import Runner
from dbkeeper.schedule import Schedule
from dbkeeper.scheduler import Heartbeat, Scheduler
from dbkeeper.store import StateStore, now
from dbkeeper.targets import Target
from dbkeeper.tasks.python import JobFunction, PythonJob

ChainProgress = Callable[[str, float, int | None, str], None]
CHAIN_POLL = 0.5
# How long a thread of `dbkeeper start` may hold the GIL while others wait for it (Python's
# default: 5 ms). At a thousand runs a second on 32 workers, p99 lateness was 79-110 ms
# with 5 ms slices and 58-62 ms with 10 ms ones (bench/README.md).
SWITCH_INTERVAL = 0.01


def _for(progress: ChainProgress | None, job: str) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda percent, rows, message: progress(job, percent, rows, message)


class Keeper:
    """Declared jobs plus the machinery to check, preview, run and schedule them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.targets = {name: Target(name, url) for name, url in config.databases.items()}
        self.catalog = Catalog(config, lambda: self.store)

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> Keeper:
        config = config_module.load(path)
        # `python` jobs name modules that live beside the config file.
        folder = str(config.path.parent.resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return cls(config)

    @classmethod
    def in_memory(
        cls, *, state: str, databases: dict[str, str] | None = None, timezone: str = "UTC"
    ) -> Keeper:
        """A Keeper with no config file, for applications that declare jobs in Python."""
        settings = KeeperSettings(state=state, timezone=timezone)
        return cls(
            Config(
                path=Path.cwd() / "<python>",
                keeper=settings,
                databases=dict(databases or {}),
                jobs={},
            )
        )

    @cached_property
    def store(self) -> StateStore:
        return StateStore(self.config.state_url)

    @cached_property
    def notifier(self) -> Notifier:
        return Notifier(self)

    @cached_property
    def chains(self) -> Chains:
        return Chains(self)

    @property
    def jobs(self) -> dict[str, JobSpec]:
        """Every job: the config file's, Python's and those defined at runtime."""
        return self.catalog.current.jobs

    @property
    def schedules(self) -> dict[str, Schedule | None]:
        return self.catalog.current.schedules

    @property
    def paused(self) -> dict[str, Pause]:
        return self.catalog.current.paused

    def refresh(self, *, hold: bool = False) -> bool:
        """Pick up jobs defined, changed, paused or removed at runtime (by any node)."""
        return self.catalog.refresh(hold=hold)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
        for target in self.targets.values():
            target.dispose()

    # -- declaring jobs -------------------------------------------------------

    def job(
        self, schedule: str | None = None, *, name: str | None = None, **options: Any
    ) -> Callable[[JobFunction], JobFunction]:
        """Decorator: ``@keeper.job(schedule="0 3 * * *")`` makes a function a job."""

        def register(function: JobFunction) -> JobFunction:
            job_name = name or function.__name__.replace("_", "-")
            try:
                spec = PythonJob.for_function(job_name, function, schedule=schedule, **options)
            except Exception as exc:
                raise ConfigError([f"job {job_name!r}: {exc}"]) from None
            self._declare(spec)
            return function

        return register

    def _declare(self, spec: JobSpec) -> None:
        if spec.name in self.catalog.declared:
            raise ConfigError([f"job {spec.name!r} is defined twice"])
        if spec.database is not None and spec.database not in self.targets:
            raise ConfigError([f"job {spec.name!r}: unknown database {spec.database!r}"])
        try:
            schedule = job_schedule(spec, self.config.keeper.timezone)
        except ScheduleError as exc:
            raise ConfigError([f"job {spec.name!r}, key 'schedule': {exc}"]) from None
        self.catalog.declare(spec, schedule)

    def get(self, name: str) -> JobSpec:
        return self.catalog.get(name)

    # -- jobs defined at runtime ------------------------------------------------

    def add_job(self, name: str, *, by: str | None = None, **options: Any) -> JobSpec:
        """Define a job at runtime, stored in the state store: every node runs it from its
        next slot, without a restart. Options are those of a config file's job."""
        return self.define_job(name, options, by=by, mode="add")[0]

    def set_job(
        self,
        name: str,
        options: dict[str, Any],
        *,
        by: str | None = None,
        replace: bool = False,
        unset: tuple[str, ...] = (),
    ) -> JobSpec:
        """Change a runtime job: some keys (``replace=False``) or all of them; a new
        schedule takes effect from its next slot."""
        mode: DefineMode = "replace" if replace else "merge"
        return self.define_job(name, options, by=by, mode=mode, unset=unset)[0]

    def define_job(
        self,
        name: str,
        options: dict[str, Any],
        *,
        by: str | None,
        mode: DefineMode,
        unset: tuple[str, ...] = (),
        tasks: tuple[str, ...] | None = None,
    ) -> tuple[JobSpec, bool]:
        """Add, replace or change a runtime job, checked against its database; the job and
        whether it is new."""
        return self.catalog.define(
            name, options, by=by, mode=mode, unset=unset, tasks=tasks, check=self._check_job
        )

    def _check_job(self, job: JobSpec) -> None:
        job.check(self.context(job))

    def remove_job(self, name: str, *, by: str | None = None) -> int:
        """Remove a runtime job; its history stays. Returns the queued runs it cancelled."""
        return self.catalog.remove(name, by=by)

    def pause(self, name: str, *, by: str | None = None, reason: str = "") -> bool:
        return self.catalog.pause(name, by=by, reason=reason)

    def resume(self, name: str, *, by: str | None = None) -> bool:
        return self.catalog.resume(name, by=by)

    def changes(self, job: str | None = None, limit: int = 50) -> list[JobChange]:
        """Who added, changed, paused, resumed or removed jobs, and when; newest first."""
        return self.store.changes(job, limit)

    # -- using jobs -----------------------------------------------------------

    def context(self, job: JobSpec) -> RunContext:
        return RunContext(job, self.targets, store=None)

    def check(self) -> list[str]:
        """Check every job against its real database; the problems found, each located."""
        problems = [
            f"runtime job {name!r} cannot be loaded: {problem}"
            for name, found in self.catalog.current.invalid.items()
            for problem in found
        ]
        for name, job in self.jobs.items():
            try:
                self._check_job(job)
            except DbkeeperError as exc:
                problems.append(f"{self._where(name)}: job {name!r}: {exc}")
        return problems

    def _where(self, job: str) -> str:
        if self.catalog.current.sources[job] == "runtime":
            return "runtime job"
        return self.config.where(job)

    def preview(self, name: str) -> dict[str, Any]:
        job = self.get(name)
        return {"job": name, "task": job.task, **job.preview(self.context(job))}

    def run(
        self,
        name: str,
        *,
        with_downstream: bool = False,
        on_progress: ProgressCallback | None = None,
        token: CancelToken | None = None,
    ) -> Run:
        """Run a job now in this thread, recorded like a scheduled run (with its retries).

        With ``with_downstream`` its end starts the jobs that come after it (queued for
        any node; ``run_chain`` runs them here)."""
        job = self.get(name)
        store = self.store
        store.register_jobs([name], now())
        node = store.register_node("run")
        try:
            self.reap_orphans()
            run_id, slot, skipped = self._claim_manual(
                job, RunStatus.RUNNING, node.id, busy=[RunStatus.RUNNING], chain=with_downstream
            )
            if skipped:
                found = store.get_run(run_id)
                assert found is not None
                return found
            with Heartbeat(store, node.id, self.config.keeper.heartbeat.total_seconds()):
                recorded = self._runner(node.id).execute(
                    job,
                    run_id,
                    slot,
                    token=token,
                    on_progress=on_progress,
                    with_downstream=with_downstream,
                )
                return recorded.result()
        finally:
            store.stop_node(node.id)

    def run_chain(self, name: str, *, on_progress: ChainProgress | None = None) -> Iterator[Run]:
        """Run a job and then, here in the foreground, every run its chain starts, in
        order; yields each run as it ends. A downstream run another node took first is
        waited for. A failed step starts nothing after it."""
        follow = [self.run(name, with_downstream=True, on_progress=_for(on_progress, name))]
        node = self.store.register_node("run")
        try:
            with Heartbeat(self.store, node.id, self.config.keeper.heartbeat.total_seconds()):
                while follow:
                    ended = follow.pop(0)
                    yield ended
                    for started in self.store.runs(upstream_run=ended.id, oldest_first=True):
                        follow.append(self._run_queued(started, node.id, on_progress))
        finally:
            self.store.stop_node(node.id)

    def _run_queued(self, run: Run, node: str, on_progress: ChainProgress | None) -> Run:
        """Run a queued run here, or wait for the node that took it first."""
        job = self.jobs.get(run.job)
        if job is not None and self.store.start_queued(run.id, node):
            recorded = self._runner(node).execute(
                job,
                run.id,
                run.scheduled_for,
                attempt=run.attempt,
                on_progress=_for(on_progress, run.job),
                with_downstream=run.with_downstream,
            )
            return recorded.result()
        while not run.status.final:
            time.sleep(CHAIN_POLL)
            found = self.store.get_run(run.id)
            assert found is not None
            run = found
        return run

    def _runner(self, node: str) -> Runner:
        return Runner(
            self.store,
            self.targets,
            node,
            self.config.keeper.lease,
            notifier=self.notifier,
            chains=self.chains,
        )

    def request_run(self, name: str, *, with_downstream: bool = False) -> Run:
        """Queue a run of a job now (HTTP ``POST /api/jobs/{name}/run``): a scheduler node
        picks it up like any queued run. With ``concurrency = "skip"`` and a run still
        going, the request is recorded as skipped instead."""
        job = self.get(name)
        self.store.register_jobs([name], now())
        busy = [RunStatus.RUNNING, RunStatus.QUEUED]
        run_id, _, _ = self._claim_manual(
            job, RunStatus.QUEUED, None, busy=busy, chain=with_downstream
        )
        queued = self.store.get_run(run_id)
        assert queued is not None
        return queued

    def _claim_manual(
        self,
        job: JobSpec,
        status: RunStatus,
        node: str | None,
        *,
        busy: list[RunStatus],
        chain: bool,
    ) -> tuple[int, datetime, bool]:
        """Record a manual run of ``job`` now with ``status`` or, when the job skips
        overlapping runs and one of its runs is in a ``busy`` status, as skipped. Returns
        the run's id, its slot and whether it was skipped."""
        previous = self.store.runs(job=job.name, status=busy, limit=1)
        skipped = bool(previous) and job.concurrency == "skip"
        slot = datetime.now(UTC)
        run_id = self.store.claim(
            job.name,
            slot,
            status=RunStatus.SKIPPED if skipped else status,
            trigger=Trigger.MANUAL,
            node=node,
            error=f"run {previous[0].id} of this job is still running" if skipped else None,
            with_downstream=chain,
        )
        if run_id is None:
            raise DbkeeperError(f"could not record a run of {job.name!r}")
        return run_id, slot, skipped

    def liveness(self, scheduler: Scheduler | None) -> dict[str, bool]:
        """For ``/healthz``: the scheduler loop turns and the state store answers."""
        try:
            self.store.schema_version()
            store_ok = True
        except Exception:
            store_ok = False
        return {
            "scheduler": scheduler is None or scheduler.looping,
            "state_store": store_ok,
        }

    def reap_orphans(self) -> list[Run]:
        """Mark runs of vanished nodes abandoned; queue a retry where the job allows one,
        else start the jobs that come after its failure."""
        retries = []
        for run in self.store.abandon_orphans(self.config.keeper.lease):
            job = self.jobs.get(run.job)
            if job is None:
                continue
            if run.attempt > job.retries:
                if run.with_downstream:
                    self.chains.start_after(replace(run, status=RunStatus.ABANDONED))
                continue
            retry_id = self.store.claim(
                run.job,
                run.scheduled_for,
                attempt=run.attempt + 1,
                status=RunStatus.QUEUED,
                trigger=Trigger.RETRY,
                node=None,
                with_downstream=run.with_downstream,
            )
            if retry_id is not None:
                retries.append(run)
        return retries

    def scheduler(self, role: str) -> Scheduler:
        return Scheduler(self, role)

    def tick(self) -> list[Run]:
        """Run whatever is due now (and missed slots within their grace), then return."""
        return self.scheduler("tick").tick()

    def start(self, *, http: bool = True) -> None:
        """Run the scheduler (and the HTTP API) until SIGTERM or SIGINT."""
        # Imported here: the web stack is only needed by `start` (it costs every command 0.2 s).
        from dbkeeper.service import HttpServer

        scheduler = self.scheduler("scheduler")
        server = HttpServer(self, scheduler) if http else nullcontext()
        previous = {
            sig: signal.signal(sig, lambda *_: scheduler.stop())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            # The loop runs on a thread of its own: a signal handler runs on the main
            # thread, between any two of its steps, and the loop's thread may be holding
            # the very lock ``stop()`` takes (waiting on an Event holds it for a moment).
            # The main thread only waits here, holding nothing the handler needs.
            with server, ThreadPoolExecutor(1, thread_name_prefix="dbkeeper-loop") as loop:
                loop.submit(scheduler.serve).result()
        finally:
            sys.setswitchinterval(switch_interval)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def overview(self, at: datetime | None = None, only: str | None = None) -> list[dict[str, Any]]:
        """Each job (or ``only`` one) with its schedule in words, next run, last run, health."""
        moment = at or now()
        store = self.store
        states = store.job_states()
        last = store.last_runs()
        running = store.runs(status=[RunStatus.RUNNING], limit=None)
        current = self.catalog.current
        rows = []
        for name, job in current.jobs.items():
            if only is not None and name != only:
                continue
            schedule = current.schedules.get(name)
            verdict = jobhealth.judge(
                job,
                schedule,
                states.get(name),
                last.get(name),
                [run for run in running if run.job == name],
                moment,
            )
            pause = current.paused.get(name)
            rows.append(
                {
                    "name": name,
                    "task": job.task,
                    "database": job.database,
                    "description": job.description,
                    "source": current.sources[name],
                    "enabled": job.enabled,
                    "paused": pause.to_dict() if pause else None,
                    "schedule": job.schedule,
                    "schedule_words": _when_it_runs(job, schedule),
                    "timezone": schedule.timezone.key if schedule else None,
                    "next_run": (schedule.next_after(moment) if schedule and job.enabled else None),
                    "after": job.after,
                    "after_any": job.after_any,
                    "after_failure": job.after_failure,
                    "downstream": chain_module.downstream(current, name),
                    "last_run": last[name].to_dict() if name in last else None,
                    "health": verdict.health.value,
                    "health_reason": verdict.reason,
                    "consecutive_failures": verdict.consecutive_failures,
                }
            )
        return rows

    def describe(self, name: str) -> dict[str, Any]:
        """One job: its overview, settings, runtime definition, recent runs and changes."""
        self.get(name)
        [row] = self.overview(only=name)
        definition = self.catalog.current.definitions.get(name)
        return {
            **row,
            "settings": self.get(name).model_dump(mode="json"),
            "options": definition.options if definition else None,
            "runs": [run.to_dict() for run in self.history(name, limit=20)],
            "changes": [change.to_dict() for change in self.changes(name, limit=20)],
        }

    def status(self) -> dict[str, Any]:
        moment = now()
        lease = self.config.keeper.lease.total_seconds()
        return {
            "jobs": self.overview(moment),
            "nodes": [
                {**asdict(node), "alive": node.alive(moment, lease)} for node in self.store.nodes()
            ],
            "running": [
                run.to_dict() for run in self.store.runs(status=[RunStatus.RUNNING], limit=None)
            ],
        }

    def restore_archive(self, path: Path, database: str, table: str) -> dict[str, Any]:
        """Put the rows of an archive file back into ``database.table``."""
        if database not in self.targets:
            known = ", ".join(sorted(self.targets)) or "none defined"
            raise UnknownJob(f"no database named {database!r} (databases: {known})")
        return restore_archive(self.targets[database], table, path)

    def history(
        self, job: str | None = None, limit: int = 50, *, status: Sequence[RunStatus] = ()
    ) -> list[Run]:
        """Past runs, newest first; a removed job's runs too."""
        found = self.store.runs(job=job, status=status, limit=limit)
        if job is not None and not found and not self.store.changes(job, 1):
            self.get(job)  # an unknown name: say so, with the names there are
        return found


def _when_it_runs(job: JobSpec, schedule: Schedule | None) -> str:
    words = [schedule.describe()] if schedule else []
    if chained := chain_module.describe(job):
        words.append(chained)
    return "; ".join(words) or "manual only"
