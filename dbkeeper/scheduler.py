"""Deciding what is due, claiming it, and running it: once (``tick``) or for good (``start``).

A job's cursor in the state store is the last slot already accounted for.
Slots after it and up to now are claimed in order; a slot first seen later than
the job's ``misfire_grace`` is recorded as ``missed``. Whether a claim wins is
decided by the store's unique key, so any number of processes may tick at once.
``start`` claims slots a little ahead of time (three times as long as claiming took
last time) and holds them until they are due, so a run starts at its slot rather
than after the claim's transaction; a slot of a job that is still running is claimed
only when it is due, where its ``concurrency`` decides.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from dbkeeper.context import CancelToken
from dbkeeper.logs import EACH_LINE_UP_TO, log_in_one_line
from dbkeeper.models import Run, RunStatus, Trigger
from dbkeeper.runner import Runner
from dbkeeper.store import Claim, now
from dbkeeper.units import format_duration

if TYPE_CHECKING:
    from dbkeeper.catalog import JobSet
    from dbkeeper.keeper import Keeper
    from dbkeeper.store import StateStore

log = logging.getLogger("dbkeeper.scheduler")

# Past this many missed slots in one look, the oldest are summarised in one record.
MISSED_RECORD_LIMIT = 100
IDLE_WAKE = timedelta(minutes=5)
# How often a sleeping scheduler looks for jobs changed and runs queued by other nodes.
POLL = timedelta(seconds=2)
STALLED_AFTER = timedelta(minutes=1)
PRUNE_EVERY = timedelta(hours=1)
RETRY_CLAIMS = timedelta(seconds=5)
# Runs' ends are gathered while they keep coming, at most this long, and committed together.
GATHER_ENDS = timedelta(milliseconds=250)
# How far ahead of its slot a run is claimed: three times what the last claim took, within these.
LEAD_MIN = timedelta(milliseconds=20)
LEAD_MAX = timedelta(milliseconds=500)


@dataclass(frozen=True)
class Claimed:
    job: str
    run_id: int
    scheduled_for: datetime
    attempt: int = 1
    with_downstream: bool = True
    claimed_ahead_at: datetime | None = None  # claimed before its slot, at this moment


class Scheduler:
    def __init__(self, keeper: Keeper, role: str) -> None:
        self.keeper = keeper
        self.store = keeper.store
        self.stopping = threading.Event()
        self.node = self.store.register_node(role)
        self.runner = Runner(
            self.store,
            keeper.targets,
            self.node.id,
            keeper.config.keeper.lease,
            self.stopping,
            keeper.notifier,
            keeper.chains,
            GATHER_ENDS.total_seconds(),
        )
        self._wake = threading.Event()
        self._tokens: dict[int, CancelToken] = {}
        self._lock = threading.Lock()
        self._last_prune = now() - PRUNE_EVERY
        self._upcoming: dict[str, datetime] = {}
        self._upcoming_for: JobSet | None = None
        self._earliest: datetime | None = None
        self._deferred: datetime | None = None  # the earliest slot left to claim when due
        self._lead = LEAD_MAX  # how far ahead of their slots runs are claimed
        self._next_look = now()  # when to claim slots again
        self.last_loop = now()
        keeper.store.register_jobs(list(keeper.schedules), now())

    # -- claiming -------------------------------------------------------------

    def claim_due(self, moment: datetime, until: datetime | None = None) -> list[Claimed]:
        """Claim every slot of every enabled scheduled job due by ``until`` (by default
        ``moment``, now); return those to run here, some maybe not due yet.

        All of a look's claims and cursor moves commit together, in one transaction, which
        holds the version of the runtime jobs it claims for: no slot of a job is claimed
        under a definition that has changed."""
        with self.store.transaction():
            self.keeper.refresh(hold=True)
            claimed = self._claim_slots(moment, until or moment)
        return claimed + self._claim_queued(self.store.running_jobs())

    def _claim_slots(self, moment: datetime, until: datetime) -> list[Claimed]:
        """Claim every slot due by ``until`` in one statement, and move the cursors in
        another. A running job's slots after ``moment`` are left to be claimed when due."""
        known = self.store.cursors()
        running = self.store.running_jobs()
        claims: list[Claim] = []
        cursors: dict[str, datetime] = {}
        self._deferred = None
        # In name order: nodes claiming at once take their row locks in the same order.
        for name, schedule in sorted(self.keeper.schedules.items()):
            job = self.keeper.jobs[name]
            if schedule is None or name not in known:
                continue
            slots = list(schedule.slots(known[name] or moment, until))
            if name in running and slots and slots[-1] > moment:
                ahead = next(slot for slot in slots if slot > moment)
                self._deferred = min(self._deferred or ahead, ahead)
                slots = [slot for slot in slots if slot <= moment]
            if slots:
                cursors[name] = slots[-1]
            if not job.enabled:  # paused or disabled: its slots pass, unrecorded
                continue
            late = [slot for slot in slots if moment - slot > job.misfire_grace]
            claims += self._missed(name, late, moment, job.misfire_grace)
            for slot in slots[len(late) :]:
                if name in running and job.concurrency == "skip":
                    status, error = RunStatus.SKIPPED, "the previous run was still running"
                else:
                    status = RunStatus.QUEUED if name in running else RunStatus.RUNNING
                    error = None
                claims.append(self._slot(name, slot, status, error))
                running.add(name)
        won = self.store.claim_all(claims)
        self.store.advance_cursors(cursors)
        return [
            Claimed(
                claim.job,
                run_id,
                claim.scheduled_for,
                claimed_ahead_at=moment if claim.scheduled_for > moment else None,
            )
            for claim, run_id in zip(claims, won, strict=True)
            if run_id is not None and claim.status is RunStatus.RUNNING
        ]

    def _missed(
        self, name: str, late: list[datetime], moment: datetime, grace: timedelta
    ) -> list[Claim]:
        """Claims recording slots first seen past their grace (the oldest summarised)."""
        summarised = late[:-MISSED_RECORD_LIMIT] if len(late) > MISSED_RECORD_LIMIT else []
        claims = []
        if summarised:
            error = (
                f"{len(summarised)} slots from {summarised[0].isoformat()} to "
                f"{summarised[-1].isoformat()} were missed (recorded as one)"
            )
            claims.append(self._slot(name, summarised[0], RunStatus.MISSED, error))
        for slot in late[len(summarised) :]:
            error = (
                f"first seen {format_duration(moment - slot)} after its slot; "
                f"misfire_grace is {format_duration(grace)}"
            )
            claims.append(self._slot(name, slot, RunStatus.MISSED, error))
        return claims

    def _slot(self, job: str, slot: datetime, status: RunStatus, error: str | None) -> Claim:
        """A claim of a scheduled slot by this node."""
        return Claim(job, slot, status, Trigger.SCHEDULE, self.node.id, error=error)

    def _claim_queued(self, running: set[str]) -> list[Claimed]:
        claimed = []
        for run in self.store.runs(status=[RunStatus.QUEUED], limit=None, oldest_first=True):
            if run.job in running or run.job not in self.keeper.jobs:
                continue
            if self.store.start_queued(run.id, self.node.id):
                claimed.append(
                    Claimed(run.job, run.id, run.scheduled_for, run.attempt, run.with_downstream)
                )
                running.add(run.job)
        return claimed

    # -- running --------------------------------------------------------------

    def _run(self, claimed: Claimed) -> Future[Run]:
        """Run a claimed run in this worker; returns its end, which is recorded meanwhile."""
        token = CancelToken()
        with self._lock:
            self._tokens[claimed.run_id] = token
        try:
            recorded = self.runner.execute(
                self.keeper.jobs[claimed.job],
                claimed.run_id,
                claimed.scheduled_for,
                attempt=claimed.attempt,
                token=token,
                with_downstream=claimed.with_downstream,
            )
        finally:
            with self._lock:
                self._tokens.pop(claimed.run_id, None)
        if self._may_unblock(claimed.job):  # once the end is recorded, look again
            recorded.add_done_callback(lambda _: self._wake.set())
        return recorded

    def _may_unblock(self, name: str) -> bool:
        """Whether a run's end may leave a run to start at once: one queued behind it (a job
        that does not skip overlaps), or one its chain queued. Other ends wake nobody:
        at a thousand runs a second, a look after each would cost more than the runs."""
        current = self.keeper.catalog.current
        job = current.jobs.get(name)
        return (
            job is None
            or job.concurrency != "skip"
            or (name, True) in current.followers
            or (name, False) in current.followers
        )

    def tick(self, moment: datetime | None = None) -> list[Run]:
        """Run everything due now (and queued runs it unblocks); wait for them; return them."""
        self.housekeeping()
        finished: list[Run] = []
        workers = self.keeper.config.keeper.workers
        try:
            with (
                self._heartbeat(),
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dbkeeper") as pool,
            ):
                batch = self.claim_due(moment or now())
                while batch:
                    finished += [recorded.result() for recorded in pool.map(self._run, batch)]
                    batch = self._claim_queued(set())
        finally:
            self.store.stop_node(self.node.id)
        return finished

    def housekeeping(self) -> None:
        if self.keeper.reap_orphans():
            self._wake.set()
        moment = now()
        self.keeper.notifier.watch(moment)
        if moment - self._last_prune >= PRUNE_EVERY:
            self._last_prune = moment
            removed = self.store.prune(moment - self.keeper.config.keeper.history_retention)
            if removed:
                log.info("pruned %d runs older than the history retention", removed)

    def serve(self) -> None:
        """The long-running loop of ``dbkeeper start``; returns after ``stop()``."""
        settings = self.keeper.config.keeper
        futures: dict[Future[Future[Run]], Claimed] = {}
        held: list[Claimed] = []  # claimed ahead of their slots, in slot order
        pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="dbkeeper")
        log.info("scheduler %s started with %d jobs", self.node.id, len(self.keeper.jobs))
        # What start-up loaded (modules, the jobs, the store's metadata) lives as long as
        # the process: the collector need not go through it again (each full collection
        # held every thread for 60-100 ms at a thousand runs a second).
        gc.freeze()
        next_poll = now()
        with self._heartbeat():
            try:
                while not self.stopping.is_set():
                    self.last_loop = now()
                    woken = self._wake.is_set()
                    self._wake.clear()
                    self._start(held, pool, futures)
                    # Woken only because held slots came: nothing to look at meanwhile.
                    if woken or now() >= min(self._next_look, next_poll):
                        try:
                            due = self._look()
                        except SQLAlchemyError:  # the state store is away: try again shortly
                            log.exception("claiming due runs failed; retrying")
                            self.stopping.wait(RETRY_CLAIMS.total_seconds())
                            continue
                        next_poll = now() + POLL
                        held[:] = sorted(held + due, key=lambda claimed: claimed.scheduled_for)
                        self._start(held, pool, futures)
                    futures = {f: claimed for f, claimed in futures.items() if not f.done()}
                    moment = now()
                    wake = min(self._next_look, next_poll, *(c.scheduled_for for c in held[:1]))
                    self._wake.wait(max(0.0, (wake - moment).total_seconds()))
            finally:
                self._shutdown(pool, futures, held, settings.shutdown_grace.total_seconds())
        self.store.stop_node(self.node.id)
        log.info("scheduler %s stopped", self.node.id)

    def _start(
        self,
        held: list[Claimed],
        pool: ThreadPoolExecutor,
        futures: dict[Future[Future[Run]], Claimed],
    ) -> None:
        """Hand the held runs whose slots have come to the workers. Each is logged, or,
        when many start at once, they are logged in one line (each at debug level)."""
        moment = now()
        due = [claimed for claimed in held if claimed.scheduled_for <= moment]
        del held[: len(due)]  # they are in slot order
        each = log.info if len(due) <= EACH_LINE_UP_TO else log.debug
        for claimed in due:
            each("starting %s (slot %s)", claimed.job, claimed.scheduled_for)
            futures[pool.submit(self._run, claimed)] = claimed
        if len(due) > EACH_LINE_UP_TO:
            log_in_one_line(log, "starting %d runs: %s and %d more", [c.job for c in due])

    def _look(self) -> list[Claimed]:
        """What to start now or hold until its slot. When a claim is due or the runtime
        jobs changed, claims the slots due within the lead; otherwise (a poll, or woken by
        a run's end, a request or a held slot) only looks for queued runs: an end may have
        unblocked one, and chains and requests queue theirs. The ends of runs here are
        recorded first, when there is something to claim: a run that ended is not taken
        as running. Not otherwise: a look right after a second's runs start would hurry
        their ends' commit into the middle of the next ones starting."""
        moment = now()
        if moment >= self._next_look or self.keeper.refresh():
            self.runner.ends.flush()
            until = moment + self._lead
            claimed = self.claim_due(moment, until)
            self._lead = min(max(3 * (now() - moment), LEAD_MIN), LEAD_MAX)
            ahead = self._next_slot(until) - self._lead
            self._next_look = min(ahead, self._deferred) if self._deferred else ahead
            return claimed
        if not self.store.runs(status=[RunStatus.QUEUED], limit=1):
            return []
        self.runner.ends.flush()
        return self._claim_queued(self.store.running_jobs())

    def _next_slot(self, moment: datetime) -> datetime:
        """The next slot of any enabled job (or a while from now when none has one).
        Each job's next slot is remembered until it passes or the jobs change, and so is
        the earliest of them."""
        current = self.keeper.catalog.current
        if current is not self._upcoming_for:
            self._upcoming, self._upcoming_for, self._earliest = {}, current, None
        elif self._earliest is not None and moment < self._earliest:
            return min(self._earliest, moment + IDLE_WAKE)
        for name, schedule in current.schedules.items():
            if schedule is None or not current.jobs[name].enabled:
                continue
            slot = self._upcoming.get(name)
            if slot is None or slot <= moment:
                self._upcoming[name] = schedule.next_after(moment)
        self._earliest = min(self._upcoming.values(), default=None)
        return min(self._earliest or moment + IDLE_WAKE, moment + IDLE_WAKE)

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Look for work now (a run was queued by hand)."""
        self._wake.set()

    @property
    def looping(self) -> bool:
        """Whether the loop of ``serve`` is running and has looked for work recently."""
        return not self.stopping.is_set() and now() - self.last_loop < STALLED_AFTER

    def _heartbeat(self) -> Heartbeat:
        interval = self.keeper.config.keeper.heartbeat.total_seconds()
        return Heartbeat(self.store, self.node.id, interval, self.housekeeping)

    def _shutdown(
        self,
        pool: ThreadPoolExecutor,
        futures: dict[Future[Future[Run]], Claimed],
        held: list[Claimed],
        grace: float,
    ) -> None:
        """Undo the claims of runs held for slots not yet come, hand back runs not yet
        started for any node to take, let running ones finish within ``grace``, then
        interrupt the rest (each records itself as cancelled), and wait until every end
        is recorded."""
        ahead = [
            (claimed.run_id, claimed.job, claimed.scheduled_for, claimed.claimed_ahead_at)
            for claimed in held
            if claimed.claimed_ahead_at is not None
        ]
        if ahead:
            log.info("giving back %d slots claimed ahead", len(ahead))
            self.store.unclaim(ahead)
        unstarted = [claimed.run_id for future, claimed in futures.items() if future.cancel()]
        unstarted += [claimed.run_id for claimed in held if claimed.claimed_ahead_at is None]
        if unstarted:
            log.info("handing back %d runs that had not started", len(unstarted))
            self.store.hand_back(unstarted)
        pending = [future for future in futures if not future.done()]
        if pending:
            log.info("waiting up to %.0fs for %d running jobs", grace, len(pending))
            wait(pending, timeout=grace)
        with self._lock:
            tokens = dict(self._tokens)
        for run_id, token in tokens.items():
            log.warning("interrupting run %s at shutdown", run_id)
            token.cancel("interrupted by shutdown")
        pool.shutdown(wait=True, cancel_futures=True)
        self.runner.ends.flush()


class Heartbeat:
    """While open, renews a node's lease every ``interval`` and runs ``chores`` after it."""

    def __init__(
        self,
        store: StateStore,
        node: str,
        interval: float,
        chores: Callable[[], None] | None = None,
    ) -> None:
        self.store, self.node, self.interval, self.chores = store, node, interval, chores
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="dbkeeper-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.store.heartbeat(self.node)
                if self.chores:
                    self.chores()
            except Exception:
                log.exception("heartbeat failed")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
