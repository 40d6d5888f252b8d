"""Running one claimed run to its end: timeout, retries with backoff, and the record.

The task body runs in its own thread so a timeout can be enforced even on code
that never looks at its cancel token: the token is set (which interrupts the
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
        self.chains = chains

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
            result = self._attempt(job, run_id, scheduled_for, attempt, token, on_progress)
            will_retry = (
                result.status in (RunStatus.FAILED, RunStatus.TIMED_OUT)
                and attempt <= job.retries
                and not self.stopping.is_set()
            )
            self._record(job, run_id, result, chained=with_downstream and not will_retry)
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
            if self.stopping.wait(delay.total_seconds()):
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
        final = self.store.get_run(run_id)
        assert final is not None
        if self.notifier is not None:
            self.notifier.run_finished(job, final)
        return final

    def _record(self, job: JobSpec, run_id: int, result: Attempt, *, chained: bool) -> None:
        """Record an attempt's end and, for a chain's final attempt, start the jobs after it
        (in one transaction: an end is never recorded without the runs it starts)."""
        recorded = result.outcome.recorded()
        chains = self.chains if chained else None
        with self.store.transaction():
            starting = chains.hold(job.name, result.status) if chains else []
            if chains and result.status is not RunStatus.SUCCEEDED:
                if stopped := chains.stopped(job.name):
                    recorded = {**recorded, "chain_stopped": stopped}
            self.store.finish(
                run_id,
                result.status,
                rows_affected=result.outcome.rows_affected,
                result=recorded,
                error=result.error,
            )
            if chains and starting:
                ended = self.store.get_run(run_id)
                assert ended is not None
                chains.start(ended, starting)

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
        box: list[Attempt] = []
        body = threading.Thread(
            target=lambda: box.append(self._body(job, run_id, ctx)),
            name=f"dbkeeper-run-{run_id}",
            daemon=True,
        )
        body.start()
        timeout = job.timeout.total_seconds() if job.timeout else None
        body.join(timeout)
        if body.is_alive():
            token.cancel(f"timeout after {format_duration(job.timeout or timedelta())}")
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
