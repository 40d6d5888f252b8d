"""Value objects shared by the store, the runner and the interfaces."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    MISSED = "missed"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"

    @property
    def final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)

    @property
    def failure(self) -> bool:
        return self in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.ABANDONED)


class Trigger(enum.StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    RETRY = "retry"
    UPSTREAM = "upstream"  # started by the success (or failure) of a job it comes after


@dataclass(frozen=True, kw_only=True)
class Run:
    id: int
    job: str
    scheduled_for: datetime
    attempt: int
    trigger: Trigger
    status: RunStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float = 0.0
    rows_affected: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    node: str | None = None
    upstream_run: int | None = None  # the run whose end started this one
    with_downstream: bool = True  # whether its end starts the jobs that come after it

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "scheduled_for": self.scheduled_for.isoformat(),
            "attempt": self.attempt,
            "trigger": self.trigger.value,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_seconds": self.duration,
            "progress": self.progress,
            "rows_affected": self.rows_affected,
            "result": self.result,
            "error": self.error,
            "node": self.node,
            "upstream_run": self.upstream_run,
            "with_downstream": self.with_downstream,
        }


@dataclass(frozen=True, kw_only=True)
class JobState:
    name: str
    cursor: datetime | None
    consecutive_failures: int
    last_status: RunStatus | None
    paused: Pause | None = None


@dataclass(frozen=True, kw_only=True)
class Pause:
    at: datetime
    by: str
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "by": self.by, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class JobDefinition:
    """A job defined at runtime (API, ``dbkeeper job``, ``keeper.add_job``): its options
    exactly as given, validated by every node that loads them."""

    name: str
    options: dict[str, Any]
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, kw_only=True)
class JobChange:
    """One entry of a job's change log: added, changed, removed, paused, resumed."""

    job: str
    at: datetime
    action: str
    by: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "at": self.at.isoformat(),
            "action": self.action,
            "by": self.by,
            "detail": self.detail,
        }


@dataclass(frozen=True, kw_only=True)
class Node:
    id: str
    host: str
    pid: int
    version: str
    role: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None

    def alive(self, now: datetime, lease_seconds: float) -> bool:
        return (
            self.stopped_at is None and (now - self.heartbeat_at).total_seconds() <= lease_seconds
        )
