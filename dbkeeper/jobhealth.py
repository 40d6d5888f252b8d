"""A job's health in one word, from its schedule and history, the way cron monitors judge it.

``disabled``  the job is switched off
``stuck``     a run has gone on past its timeout (or, without one, 6 hours)
``failing``   the last run failed; ``consecutive_failures`` says how often in a row
``dead``      scheduled, but nothing recorded for three periods: no scheduler is running it
``late``      a slot is overdue past its grace and has not been claimed
``healthy``   none of the above
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbkeeper.jobspec import JobSpec
from dbkeeper.models import JobState, Run
from dbkeeper.schedule import Schedule

STUCK_WITHOUT_TIMEOUT = timedelta(hours=6)
DEAD_AFTER_PERIODS = 3


class Health(enum.StrEnum):
    HEALTHY = "healthy"
    LATE = "late"
    FAILING = "failing"
    STUCK = "stuck"
    DEAD = "dead"
    DISABLED = "disabled"


@dataclass(frozen=True)
class JobHealth:
    health: Health
    reason: str
    consecutive_failures: int = 0


def judge(
    job: JobSpec,
    schedule: Schedule | None,
    state: JobState | None,
    last: Run | None,
    running: list[Run],
    now: datetime,
) -> JobHealth:
    failures = state.consecutive_failures if state else 0
    if not job.enabled:
        return JobHealth(Health.DISABLED, "disabled in config", failures)
    limit = job.timeout or STUCK_WITHOUT_TIMEOUT
    for run in running:
        if run.started_at and now - run.started_at > limit:
            return JobHealth(
                Health.STUCK,
                f"run {run.id} has been running since {run.started_at:%Y-%m-%d %H:%M}",
                failures,
            )
    if failures and last is not None and last.status.failure:
        return JobHealth(
            Health.FAILING, f"last run {last.status.value}: {last.error or ''}".strip(), failures
        )
    if schedule is None or state is None or state.cursor is None:
        return JobHealth(Health.HEALTHY, "", failures)
    due = schedule.next_after(state.cursor)
    overdue = now - due
    if overdue > schedule.typical_period(due) * DEAD_AFTER_PERIODS + job.misfire_grace:
        return JobHealth(Health.DEAD, f"nothing recorded since {state.cursor:%Y-%m-%d %H:%M} UTC")
    if overdue > job.misfire_grace:
        return JobHealth(Health.LATE, f"slot {due:%Y-%m-%d %H:%M} UTC not yet run", failures)
    return JobHealth(Health.HEALTHY, "", failures)
