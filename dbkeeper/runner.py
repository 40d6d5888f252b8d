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
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from dbkeeper.context import CancelToken, Outcome, ProgressCallback, RunContext
from dbkeeper.errors import Cancelled, DbkeeperError
from dbkeeper.logs import EACH_LINE_UP_TO, log_in_one_line
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
    claim recorded when it was claimed, before it waited for a worker). ``recorded``
    holds the run as recorded, once its transaction committed."""

    job: JobSpec
    run_id: int
    attempt: Attempt
    chained: bool
    started: datetime
    recorded: Future[Run] = field(default_factory=Future)


class EndRecorder:
    """Records runs' ends, several in one transaction (group commit), on a thread of its
    own: a worker hands its run's end over and is free for its next run; whoever needs
    the run as recorded waits on ``End.recorded``. The thread starts with the first end,
    commits what queued while it wrote, and stops once no end came for ``LINGER``
    seconds. With ``gather``, it first waits for more ends while they keep coming (a
    pause of ``QUIET`` ends the wait), at most ``gather`` seconds or until ``flush``:
    one transaction for a burst of ends rather than many small ones competing with the
    runs starting meanwhile. With a chain, an end and the runs it starts are one
    transaction: an end is never recorded without them."""

    LINGER = 1.0
    QUIET = 0.02

    def __init__(self, store: StateStore, chains: Chains | None, gather: float = 0.0) -> None:
        self.store = store
        self.chains = chains
        self.gather = gather
        self._turn = threading.Condition()
        self._queued: list[End] = []
        self._writing = False
        self._hurry = False  # flush() waits: commit what has come without gathering more
        self._submitted = 0  # ends handed over
        self._settled = 0  # of those, ends committed (or failed), in order

    def submit(self, end: End) -> Future[Run]:
        with self._turn:
            self._queued.append(end)
            self._submitted += 1
            start, self._writing = not self._writing, True
            if len(self._queued) == 1:  # the thread may wait for a first end
                self._turn.notify_all()
        if start:  # outside the lock: other workers hand their ends over meanwhile
            threading.Thread(target=self._drain, name="dbkeeper-ends", daemon=True).start()
        return end.recorded

    def flush(self) -> None:
        """Wait until every end handed over so far is committed (or has failed)."""
        with self._turn:
            handed = self._submitted
            if self._queued:  # the thread may be gathering more: commit these now
                self._hurry = True
                self._turn.notify_all()
            self._turn.wait_for(lambda: self._settled >= handed)

    def _drain(self) -> None:
        while True:
            with self._turn:
                if not self._turn.wait_for(lambda: self._queued, self.LINGER):
                    self._writing = False
                    return
                self._gather()
                batch, self._queued, self._hurry = self._queued, [], False
            self._commit(batch)
            with self._turn:
                self._settled += len(batch)
                self._turn.notify_all()

    def _gather(self) -> None:
        """Wait (holding ``_turn``) while ends keep coming, within ``gather`` seconds."""
        deadline = time.monotonic() + self.gather
        while not self._hurry and time.monotonic() < deadline:
            seen = len(self._queued)
            self._turn.wait_for(lambda: self._hurry, self.QUIET)
            if len(self._queued) == seen:
                return

    def _commit(self, batch: list[End]) -> None:
        try:
            recorded = self._write(batch)
        except Exception as exc:
            if len(batch) > 1:  # one end's failure must not lose the others: each on its own
                for end in batch:
                    self._commit([end])
                return
            log.error("recording the end of run %s failed: %s", batch[0].run_id, exc)
            batch[0].recorded.set_exception(exc)
            return
        for end, run in zip(batch, recorded, strict=True):
            end.recorded.set_result(run)
        log_ends(batch)

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


def log_ends(batch: list[End]) -> None:
    """A line per end recorded; past ``EACH_LINE_UP_TO`` runs succeeding at once, one
    line for them (each at debug level). Runs that did not succeed keep their lines."""
    succeeded = [end.job.name for end in batch if end.attempt.status is RunStatus.SUCCEEDED]
    many = len(succeeded) > EACH_LINE_UP_TO
    for end in batch:
        status = end.attempt.status
        line = log.debug if many and status is RunStatus.SUCCEEDED else log.info
        error = f": {end.attempt.error}" if end.attempt.error else ""
        line("run %s of %s %s%s", end.run_id, end.job.name, status.value, error)
    if many:
        log_in_one_line(log, "%d runs succeeded: %s and %d more", succeeded)


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
        gather: float = 0.0,
    ) -> None:
        self.store = store
        self.targets = targets
        self.node = node
        self.lease = lease
        self.stopping = stopping or threading.Event()
        self.notifier = notifier
        self.ends = EndRecorder(store, chains, gather)

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
    ) -> Future[Run]:
        """Run ``run_id`` (already claimed) and its retries; returns the last attempt's run
        as it will be recorded (a worker need not wait for that).

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
            recorded = self.ends.submit(
                End(job, run_id, result, with_downstream and not will_retry, began)
            )
            if not will_retry:
                break
            delay = min(job.retry_backoff * 2 ** (attempt - 1), MAX_BACKOFF)
            log.info("retrying %s in %s", job.name, format_duration(delay))
            if self.stopping.wait(delay.total_seconds()):  # no retry: that was the last
                if with_downstream and self.ends.chains is not None:
                    self.ends.chains.start_after(recorded.result())
                break
            recorded.result()  # the attempt's end before the next attempt's claim
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
        if self.notifier is not None and job.notify:  # an alert needs the run as recorded
            self.notifier.run_finished(job, recorded.result())
        return recorded

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
        # Jobs that write no tables skip the lock's context manager (a thousand runs a second).
        locked = self._tables_locked(job, run_id, ctx) if job.tables_written else nullcontext()
        try:
            with locked:
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
