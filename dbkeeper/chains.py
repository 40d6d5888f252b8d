"""Job chains: ``after``, ``after_any`` and ``after_failure``.

A job that comes after others is started by the end of one of their runs, with or
without a schedule of its own. The run it gets is keyed by the upstream run (a unique
index on job and upstream run), and it is recorded in the same transaction that
records the upstream run's end: however many nodes there are, each upstream end
starts exactly one downstream run, and a crash cannot lose it. The run is queued, so
any node takes it.

``after = [a, b]`` waits for all of them: the run starts when every one has succeeded
since the job was last started by the chain. ``after_any = true`` starts it on each of
their successes. ``after_failure`` starts it when a job fails for good (after its last
retry). A failed step starts nothing after it, and its run records which jobs of the
chain were not run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING

from dbkeeper.models import Run, RunStatus, Trigger
from dbkeeper.store import now

if TYPE_CHECKING:
    from dbkeeper.catalog import JobSet
    from dbkeeper.jobspec import JobSpec
    from dbkeeper.keeper import Keeper

log = logging.getLogger("dbkeeper.chains")


def chain_problems(jobs: Mapping[str, JobSpec]) -> list[tuple[str, str, str]]:
    """(job, key, problem) for upstream names that do not exist and for cycles."""
    problems = []
    for name, job in jobs.items():
        for key in ("after", "after_failure"):
            for upstream in getattr(job, key):
                if upstream == name:
                    problems.append((name, key, "a job cannot come after itself"))
                elif upstream not in jobs:
                    known = ", ".join(sorted(jobs))
                    problems.append((name, key, f"unknown job {upstream!r} (jobs: {known})"))
    if problems:
        return problems
    graph = {name: sorted({*job.after, *job.after_failure}) for name, job in sorted(jobs.items())}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        cycle: list[str] = exc.args[1]  # each one comes before the next; the last is the first
        closing, before = cycle[-1], cycle[-2]
        key = "after" if before in jobs[closing].after else "after_failure"
        words = " → ".join(cycle)
        problems.append((closing, key, f"the jobs {words} form a cycle: none of them could start"))
    return problems


def describe(job: JobSpec) -> str:
    """What starts a job besides its schedule, in words ("" when nothing does)."""
    parts = []
    if len(job.after) == 1:
        parts.append(f"after {job.after[0]} succeeds")
    elif job.after:
        which = "any" if job.after_any else "all"
        parts.append(f"after {which} of {', '.join(job.after)} succeed{'s' * job.after_any}")
    if job.after_failure:
        parts.append(f"after {' or '.join(job.after_failure)} fails")
    return "; ".join(parts)


def next_jobs(current: JobSet, name: str, status: RunStatus) -> list[str]:
    """The jobs an end of ``name`` with ``status`` starts."""
    if status is RunStatus.SUCCEEDED or status.failure:
        return list(current.followers.get((name, status is RunStatus.SUCCEEDED), []))
    return []


def downstream(current: JobSet, name: str) -> list[str]:
    """Every job a success of ``name`` leads to, directly or through others, in order."""
    found: list[str] = []
    waiting = next_jobs(current, name, RunStatus.SUCCEEDED)
    while waiting:
        job = waiting.pop(0)
        if job not in found:
            found.append(job)
            waiting += next_jobs(current, job, RunStatus.SUCCEEDED)
    return found


class Chains:
    """Starts downstream runs when a run ends; used inside the transaction recording it."""

    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper

    def hold(self, ends: list[tuple[str, RunStatus, bool]]) -> list[list[str]]:
        """Before the ends ``(job, status, chained)`` of runs are recorded: read the current
        set of jobs, and lock the rows of the jobs ending and of the jobs their chained ends
        start, in name order (as claims do: no deadlock). The jobs each end starts."""
        self.keeper.refresh(hold=True)
        current = self.keeper.catalog.current
        starting = [
            next_jobs(current, name, status) if chained else [] for name, status, chained in ends
        ]
        rows = {name for name, _, _ in ends} | {name for names in starting for name in names}
        self.keeper.store.lock_jobs(sorted(rows))
        return starting

    def start_after(self, ended: Run) -> None:
        """Start the jobs after a run whose end was recorded without them (its node died,
        or stopped during the backoff before a retry), in a transaction of their own."""
        with self.keeper.store.transaction():
            [starting] = self.hold([(ended.job, ended.status, True)])
            self.start(ended, starting)

    def stopped(self, name: str) -> list[str]:
        """The jobs of the chain a failed (or skipped) run of ``name`` leaves unstarted."""
        return downstream(self.keeper.catalog.current, name)

    def start(self, run: Run, starting: list[str]) -> None:
        """After the end of ``run`` is recorded, in the same transaction: one run of each job
        it starts (queued, skipped when that job is paused or busy and skips overlaps)."""
        store, jobs = self.keeper.store, self.keeper.jobs
        for name in starting:
            job = jobs[name]
            if run.status is RunStatus.SUCCEEDED and len(job.after) > 1 and not job.after_any:
                done = store.succeeded_since(job.after, store.last_triggered(name))
                if missing := [upstream for upstream in job.after if upstream not in done]:
                    log.info("%s waits for %s before it starts", name, ", ".join(missing))
                    continue
            busy = store.runs(job=name, status=[RunStatus.RUNNING, RunStatus.QUEUED], limit=1)
            error = None
            if not job.enabled:
                error = "the job is paused" if name in self.keeper.paused else "the job is disabled"
            elif busy and job.concurrency == "skip":
                error = f"run {busy[0].id} of this job is still {busy[0].status.value}"
            store.claim(
                name,
                now(),
                status=RunStatus.SKIPPED if error else RunStatus.QUEUED,
                trigger=Trigger.UPSTREAM,
                node=None,
                error=f"started by run {run.id} of {run.job}, but {error}" if error else None,
                upstream_run=run.id,
            )
