"""Alerts and warnings through Apprise notification URLs (``[notify.NAME]``).

Events: ``failure`` (a run failed after its last retry), ``recovery`` (a success after
failures), ``late``, ``stuck`` and ``dead`` (a job's health turned so), and ``warning``
(a health check crossed a threshold, or a purge with ``warn_before`` is about to
delete rows). Each notice has a key in the state store, and only the first node to
record that key sends it: a warning goes out once per purge slot, a health alert
once per episode, however many nodes and ticks see it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dbkeeper.context import RunContext
from dbkeeper.jobhealth import Health
from dbkeeper.models import Run, RunStatus

if TYPE_CHECKING:
    from dbkeeper.config import NotifyEvent, NotifySettings
    from dbkeeper.jobspec import JobSpec
    from dbkeeper.keeper import Keeper

log = logging.getLogger("dbkeeper.notify")

# Apprise's notification types by event (names of apprise.NotifyType members).
_TYPES = {"failure": "FAILURE", "recovery": "SUCCESS", "warning": "WARNING"}
MAX_OWNER_LINES = 100


class Notifier:
    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self.settings: dict[str, NotifySettings] = keeper.config.notify

    def listeners(self, job: JobSpec, event: NotifyEvent) -> list[str]:
        return [name for name in job.notify if event in self.settings[name].on]

    def claim(self, job: JobSpec, event: NotifyEvent, key: str) -> bool:
        """Whether this process is the one to send this notice (first to record its key)."""
        return self.keeper.store.first_notice(f"{event}:{job.name}:{key}")

    def send(self, job: JobSpec, event: NotifyEvent, title: str, body: str, key: str) -> int:
        """Send to every notifier of the job that listens for ``event``, once per ``key``."""
        if not self.listeners(job, event) or not self.claim(job, event, key):
            return 0
        return self.deliver(job, event, title, body)

    def deliver(self, job: JobSpec, event: NotifyEvent, title: str, body: str) -> int:
        sent = 0
        for name in self.listeners(job, event):
            import apprise  # imported when a notice goes out, not by every command

            sender = apprise.Apprise()
            for url in self.settings[name].urls:
                sender.add(url)
            kind = getattr(apprise.NotifyType, _TYPES.get(event, "WARNING"))
            if sender.notify(title=title, body=body, notify_type=kind):
                sent += 1
            else:
                log.warning("notifier %r could not deliver %s of %s", name, event, job.name)
        return sent

    # -- after a run ----------------------------------------------------------

    def run_finished(self, job: JobSpec, run: Run) -> None:
        """Failure, recovery, and a health check's warnings, for a run's final attempt of a
        job with ``notify`` targets."""
        try:
            self._run_finished(job, run)
        except Exception:  # an alert must never break the run it reports on
            log.exception("notifying about run %s failed", run.id)

    def _run_finished(self, job: JobSpec, run: Run) -> None:
        if run.status.failure:
            body = (
                f"Run {run.id} of {job.name} (slot {run.scheduled_for:%Y-%m-%d %H:%M} UTC) "
                f"{run.status.value} after {run.attempt} attempt(s): {run.error or ''}".strip()
            )
            if stopped := run.result.get("chain_stopped"):
                body += f"\nThe chain stops here; not run: {', '.join(stopped)}."
            self.send(
                job, "failure", f"dbkeeper: {job.name} {run.status.value}", body, f"run {run.id}"
            )
            return
        if run.status is not RunStatus.SUCCEEDED:
            return
        earlier = [r for r in self.keeper.store.runs(job=job.name, limit=20) if r.id < run.id]
        finished = [r for r in earlier if r.status.failure or r.status is RunStatus.SUCCEEDED]
        if finished and finished[0].status.failure:
            self.send(
                job,
                "recovery",
                f"dbkeeper: {job.name} recovered",
                f"Run {run.id} of {job.name} succeeded after run {finished[0].id} "
                f"{finished[0].status.value}.",
                f"run {run.id}",
            )
        report = run.result
        if job.task == "health" and report.get("status") in ("warning", "critical"):
            problems = "\n".join(f"- {p}" for p in report.get("problems", []))
            self.send(
                job,
                "warning",
                f"dbkeeper: database {job.database} is {report['status']}",
                f"Health check {run.id} of {job.database}:\n{problems}",
                f"run {run.id}",
            )

    # -- watching (every heartbeat of a scheduler) -----------------------------

    def watch(self, moment: datetime) -> None:
        """Alerts about job health, and warnings ahead of purges."""
        if not any(job.notify for job in self.keeper.jobs.values()):
            return
        try:
            self._watch_health(moment)
            self._warn_ahead(moment)
        except Exception:
            log.exception("watching jobs for notices failed")

    def _watch_health(self, moment: datetime) -> None:
        alerting = {Health.LATE: "late", Health.STUCK: "stuck", Health.DEAD: "dead"}
        for row in self.keeper.overview(moment):
            job = self.keeper.jobs[row["name"]]
            health = Health(row["health"])
            if not job.notify or health not in alerting:
                continue
            # One alert per episode: the reason names the slot or run it is about.
            self.send(
                job,
                alerting[health],  # type: ignore[arg-type]
                f"dbkeeper: {job.name} is {health.value}",
                f"{job.name}: {row['health_reason']}",
                row["health_reason"],
            )

    def _warn_ahead(self, moment: datetime) -> None:
        for name, job in self.keeper.jobs.items():
            ahead = getattr(job, "warn_before", None)
            schedule = self.keeper.schedules.get(name)
            if ahead is None or schedule is None or not job.enabled:
                continue
            slot = schedule.next_after(moment)
            if slot - moment > ahead or not self.listeners(job, "warning"):
                continue
            # Claimed before the preview, so each slot is previewed once, on one node.
            if not self.claim(job, "warning", f"slot {slot.isoformat()}"):
                continue
            preview = job.preview(RunContext(job, self.keeper.targets, now=slot))
            if preview["rows"]:
                self.deliver(job, "warning", *warning_text(job, slot, preview))


def warning_text(job: JobSpec, slot: datetime, preview: dict[str, Any]) -> tuple[str, str]:
    """Title and body of a warning ahead of a purge, grouped by owner when it has one."""
    title = f"dbkeeper: {job.name} will delete {preview['rows']} rows at {slot:%Y-%m-%d %H:%M} UTC"
    lines = [
        f"At {slot:%Y-%m-%d %H:%M} UTC, {job.name} deletes {preview['rows']} rows of "
        f"{getattr(job, 'table', '?')} older than {preview['cutoff']:%Y-%m-%d %H:%M} UTC "
        f"(oldest {_when(preview['oldest'])})."
    ]
    owners = preview.get("owners") or []
    for owner in owners[:MAX_OWNER_LINES]:
        lines.append(
            f"owner {owner['owner']}: {owner['rows']} rows, oldest {_when(owner['oldest'])}"
        )
    if len(owners) > MAX_OWNER_LINES:
        lines.append(f"... and {len(owners) - MAX_OWNER_LINES} more owners (see the preview API)")
    return title, "\n".join(lines)


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if isinstance(value, datetime) else str(value)
