"""Running one claimed run to its end: timeout, retries with backoff, and the record.

A task body with a timeout runs in its own thread so the timeout can be enforced even
on code that never looks at its cancel token: the token is set (which interrupts the
task's database connection), and if the body still does not return within a
short grace the run is recorded as timed out and the thread is left behind.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from dbkeeper.context import CancelToken, Outcome, ProgressCallback, RunContext
from dbkeeper.errors import Cancelled, DbkeeperError
from dbkeeper.models import Run, RunStatus, Trigger
from dbkeeper.store import Ending, now
from dbkeeper.units import format_duration

if TYPE_CHECKING:
    from dbkeeper.chains import Chains
    from dbkeeper.jobspec import JobSpec
    from dbkeeper.notify import Notifier
    from dbkeeper.store import StateStore
    from dbkeeper.targets import Target

log = logging.getLogger("dbkeeper.runner")

STOP_GRACE = 5.0
MAX_BACKOFF = timedelta(hours=1)
PROGRESS_WRITE_INTERVAL = 1.0
LOCK_POLL = 0.5


@dataclass
class Attempt:
    status: RunStatus
    outcome: Outcome = field(default_factory=Outcome)
    error: str | None = None


@dataclass
class End:
    """A run's end, to record: its job, run, attempt's outcome, whether it is the final
    attempt of a run that starts the jobs after it, and when the attempt began here (its
    claim recorded when it was claimed, before it waited for a worker)."""

    job: JobSpec
    run_id: int
    attempt: Attempt
    chained: bool
    started: datetime
    run: Run | None = None  # as recorded
    error: BaseException | None = None


class EndRecorder:
    """Records runs' ends, several in one transaction (group commit). The first run to end
    commits its end; runs ending meanwhile queue, and the next of them commits all queued
    ends at once. Each run waits until its own end is committed. With a chain, an end and
    the runs it starts are one transaction: an end is never recorded without them."""

    def __init__(self, store: StateStore, chains: Chains | None) -> None:
        self.store = store
        self.chains = chains
        self._turn = threading.Condition()
        self._queued: list[End] = []
        self._committing = False

    def record(self, end: End) -> Run:
        with self._turn:
            self._queued.append(end)
            while self._committing and end.run is None and end.error is None:
                self._turn.wait()
            # Nobody committed it: this run commits the queue.
            leading = end.run is None and end.error is None
            if leading:
                self._committing = True
                batch, self._queued = self._queued, []
        if leading:
            try:
                self._commit(batch)
            finally:
                with self._turn:
                    self._committing = False
                    self._turn.notify_all()
        if end.error is not None:
            raise end.error
        assert end.run is not None
        return end.run

    def _commit(self, batch: list[End]) -> None:
        try:
            recorded = self._write(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:  # one end's failure must not lose the others: each on its own
                for end in batch:
                    self._commit([end])
            return
        except BaseException as exc:  # interrupted: nobody may wait for these ends
            for end in batch:
                end.error = exc
            raise
        for end, run in zip(batch, recorded, strict=True):
            end.run = run

    def _write(self, batch: list[End]) -> list[Run]:
        chains = self.chains
        with self.store.transaction():
            if chains is not None:
                ends = [(end.job.name, end.attempt.status, end.chained) for end in batch]
                starting = chains.hold(ends)
            else:
                self.store.lock_jobs([end.job.name for end in batch])
                starting = [[] for _ in batch]
            endings = []
            for end in batch:
                recorded = end.attempt.outcome.recorded()
                if chains and end.chained and end.attempt.status is not RunStatus.SUCCEEDED:
                    if stopped := chains.stopped(end.job.name):
                        recorded = {**recorded, "chain_stopped": stopped}
                endings.append(
                    Ending(
                        end.run_id,
                        end.attempt.status,
                        end.started,
                        end.attempt.outcome.rows_affected,
                        recorded,
                        end.attempt.error,
                    )
                )
            runs = self.store.finish_all(endings)
            if chains is not None:
                for ended, started in zip(runs, starting, strict=True):
                    if started:
                        chains.start(ended, started)
        return runs


class Runner:
    def __init__(
        self,
        store: StateStore,
        targets: dict[str, Target],
        node: str,
        lease: timedelta,
        stopping: threading.Event | None = None,
        notifier: Notifier | None = None,
        chains: Chains | None = None,
    ) -> None:
        self.store = store
        self.targets = targets
        self.node = node
        self.lease = lease
        self.stopping = stopping or threading.Event()
        self.notifier = notifier
        self.ends = EndRecorder(store, chains)

    def execute(
        self,
        job: JobSpec,
        run_id: int,
        scheduled_for: datetime,
        *,
        attempt: int = 1,
        token: CancelToken | None = None,
        on_progress: ProgressCallback | None = None,
        on_attempt: Callable[[int], None] | None = None,
        with_downstream: bool = True,
    ) -> Run:
        """Run ``run_id`` (already claimed) and its retries; returns the last attempt's run.

        With ``with_downstream``, the final attempt's end starts the jobs after it."""
        while True:
            token = token or CancelToken()
            began = now()
            result = self._attempt(job, run_id, scheduled_for, attempt, token, on_progress)
            will_retry = (
                result.status in (RunStatus.FAILED, RunStatus.TIMED_OUT)
                and attempt <= job.retries
                and not self.stopping.is_set()
            )
            ended = self.ends.record(
                End(job, run_id, result, with_downstream and not will_retry, began)
            )
            log.info(
                "run %s of %s %s%s",
                run_id,
                job.name,
                result.status.value,
                f": {result.error}" if result.error else "",
            )
            if not will_retry:
                break
            delay = min(job.retry_backoff * 2 ** (attempt - 1), MAX_BACKOFF)
            log.info("retrying %s in %s", job.name, format_duration(delay))
            if self.stopping.wait(delay.total_seconds()):  # no retry: that was the last
                if with_downstream and self.ends.chains is not None:
                    self.ends.chains.start_after(ended)
                break
            attempt += 1
            retry_id = self.store.claim(
                job.name,
                scheduled_for,
                attempt=attempt,
                status=RunStatus.RUNNING,
                trigger=Trigger.RETRY,
                node=self.node,
                with_downstream=with_downstream,
            )
            if retry_id is None:
                break
            run_id, token = retry_id, None
            if on_attempt:
                on_attempt(attempt)
        if self.notifier is not None:
            self.notifier.run_finished(job, ended)
        return ended

    def _attempt(
        self,
        job: JobSpec,
        run_id: int,
        scheduled_for: datetime,
        attempt: int,
        token: CancelToken,
        on_progress: ProgressCallback | None,
    ) -> Attempt:
        last_write = 0.0

        def progress(percent: float, rows: int | None, message: str) -> None:
            nonlocal last_write
            if on_progress:
                on_progress(percent, rows, message)
            moment = time.monotonic()
            if percent >= 100 or moment - last_write >= PROGRESS_WRITE_INTERVAL:
                last_write = moment
                self.store.report_progress(run_id, percent, rows)

        ctx = RunContext(
            job,
            self.targets,
            store=self.store,
            run_id=run_id,
            scheduled_for=scheduled_for,
            attempt=attempt,
            token=token,
            on_progress=progress,
        )
        if job.timeout is None:  # nothing to enforce: no thread of its own
            return self._body(job, run_id, ctx)
        box: list[Attempt] = []
        body = threading.Thread(
            target=lambda: box.append(self._body(job, run_id, ctx)),
            name=f"dbkeeper-run-{run_id}",
            daemon=True,
        )
        body.start()
        body.join(job.timeout.total_seconds())
        if body.is_alive():
            token.cancel(f"timeout after {format_duration(job.timeout)}")
            body.join(STOP_GRACE)
        if body.is_alive():
            return Attempt(
                RunStatus.TIMED_OUT,
                Outcome(ctx.rows, {}),
                f"{token.reason}; the task did not stop within {STOP_GRACE:.0f}s "
                "and was left running",
            )
        if not box:
            return Attempt(RunStatus.FAILED, error="the task thread ended without a result")
        return box[0]

    @contextmanager
    def _tables_locked(self, job: JobSpec, run_id: int, ctx: RunContext) -> Iterator[None]:
        """Hold the job's tables for this run, waiting while another run (on any node) has them."""
        taken: list[str] = []
        try:
            for resource in sorted(f"{job.database}.{table}" for table in job.tables_written):
                waited = False
                while holder := self.store.lock(resource, run_id, self.node, self.lease):
                    if not waited:
                        log.info("run %s waits for %s, held by run %s", run_id, resource, holder)
                        waited = True
                    ctx.token.wait(LOCK_POLL)
                    ctx.check_cancelled()
                taken.append(resource)
            yield
        finally:
            for resource in taken:
                self.store.unlock(resource, run_id)

    def _body(self, job: JobSpec, run_id: int, ctx: RunContext) -> Attempt:
        try:
            with self._tables_locked(job, run_id, ctx):
                outcome = job.run(ctx)
        except Cancelled as exc:
            status = (
                RunStatus.TIMED_OUT if exc.reason.startswith("timeout") else RunStatus.CANCELLED
            )
            return Attempt(status, Outcome(ctx.rows, exc.result), str(exc))
        except DbkeeperError as exc:
            return Attempt(RunStatus.FAILED, Outcome(ctx.rows, exc.result), str(exc))
        except Exception as exc:  # a task's own bug must not kill the scheduler
            if ctx.token.cancelled:
                reason = ctx.token.reason
                status = (
                    RunStatus.TIMED_OUT if reason.startswith("timeout") else RunStatus.CANCELLED
                )
                return Attempt(status, Outcome(ctx.rows, {}), f"cancelled: {reason}")
            return Attempt(
                RunStatus.FAILED,
                Outcome(ctx.rows, {"traceback": traceback.format_exc(limit=20)}),
                f"{type(exc).__name__}: {exc}",
            )
        return Attempt(RunStatus.SUCCEEDED, outcome)
