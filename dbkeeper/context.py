"""What a task sees while it runs: its targets, the clock, progress and cancellation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbkeeper.errors import Cancelled, TargetError

if TYPE_CHECKING:
    from dbkeeper.jobspec import JobSpec
    from dbkeeper.store import StateStore
    from dbkeeper.targets import Target

ProgressCallback = Callable[[float, int | None, str], None]


@dataclass
class Outcome:
    """What a finished task reports: rows it changed and a structured result."""

    rows_affected: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # one line for people, e.g. "deleted 120 rows older than ..."

    def recorded(self) -> dict[str, Any]:
        """The result as the run records it, with the summary."""
        return {**self.result, "summary": self.summary} if self.summary else self.result


class CancelToken:
    """Set once, by a timeout or a shutdown; tasks check it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile."""
        return self._event.wait(seconds)

    @contextmanager
    def interrupting(self, callback: Callable[[], None]) -> Iterator[None]:
        """Call ``callback`` (e.g. a connection's interrupt) if cancelled meanwhile."""
        with self._lock:
            self._callbacks.append(callback)
            already = self._event.is_set()
        try:
            if already:
                callback()
            yield
        finally:
            with self._lock:
                self._callbacks.remove(callback)


class RunContext:
    def __init__(
        self,
        job: JobSpec,
        targets: dict[str, Target],
        *,
        store: StateStore | None = None,
        run_id: int | None = None,
        scheduled_for: datetime | None = None,
        attempt: int = 1,
        now: datetime | None = None,
        token: CancelToken | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.job = job
        self.targets = targets
        self.store = store
        self.run_id = run_id
        self.now = now or datetime.now(UTC)
        self.scheduled_for = scheduled_for or self.now
        self.attempt = attempt
        self.token = token or CancelToken()
        self._on_progress = on_progress
        self._last_progress = 0.0
        self.rows: int | None = None

    @property
    def application_name(self) -> str:
        """How this run names its database sessions."""
        run = f"run {self.run_id}" if self.run_id is not None else "preview"
        return f"dbkeeper {self.job.name} {run}"

    def target(self, name: str | None = None) -> Target:
        wanted = name or self.job.database
        if wanted is None or wanted not in self.targets:
            raise TargetError(f"job {self.job.name!r}: unknown database {wanted!r}")
        return self.targets[wanted]

    def progress(self, percent: float, rows: int | None = None, message: str = "") -> None:
        """Report progress; cheap to call often, forwarded at most a few times a second."""
        if rows is not None:
            self.rows = rows
        now = time.monotonic()
        if percent < 100 and now - self._last_progress < 0.2:
            return
        self._last_progress = now
        if self._on_progress:
            self._on_progress(max(0.0, min(100.0, percent)), rows, message)

    def check_cancelled(self) -> None:
        if self.token.cancelled:
            raise Cancelled(self.token.reason)
