"""Scheduling through the real CLI: exactly-once slots, missed slots, timeouts, retries,
concurrency policies, graceful shutdown, idle cost and history retention."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from dbkeeper.keeper import Keeper
from dbkeeper.models import RunStatus, Trigger
from dbkeeper.runner import Attempt, End, log_ends
from dbkeeper.scheduler import Scheduler
from tests.conftest import Project

JOBS = """
import os
import time
from pathlib import Path

HERE = Path(__file__).parent


def record(ctx, pause=0.0):
    if pause:
        ctx.token.wait(pause)
    with (HERE / "ran.log").open("a") as log:
        log.write(f"{ctx.job.name} {ctx.scheduled_for.isoformat()} {ctx.attempt} {os.getpid()}\\n")


def flaky(ctx, failures=2):
    counter = HERE / "flaky.count"
    seen = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(seen + 1))
    if seen < failures:
        raise RuntimeError(f"failure number {seen + 1}")
    return {"rows_affected": 7}


def wait(ctx, seconds=60.0):
    (HERE / f"{ctx.job.name}.started").write_text(str(os.getpid()))
    ctx.token.wait(seconds)
    ctx.check_cancelled()
    (HERE / f"{ctx.job.name}.finished").touch()
"""

History = Callable[..., list[dict[str, Any]]]


def _project(project: Project, jobs: str, keeper: str = "") -> Project:
    (project.path / "jobs.py").write_text(JOBS)
    project.write_config(f"[keeper]\n{keeper}\n{jobs}")
    return project


def _set_cursor(state: Path, job: str, moment: datetime) -> None:
    conn = sqlite3.connect(state)
    text = moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    conn.execute("UPDATE dbkeeper_jobs SET cursor = ? WHERE name = ?", (text, job))
    conn.commit()
    conn.close()


def _minute_start(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _away_from_minute_boundary() -> datetime:
    """Now, at least 8 seconds before the next whole minute (waiting if needed)."""
    moment = datetime.now(UTC)
    if moment.second >= 50:
        time.sleep(61 - moment.second)
    return datetime.now(UTC)


def _lines(project: Project) -> list[list[str]]:
    log = project.path / "ran.log"
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def _wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


EVERY_MINUTE = """
[jobs.minutely]
task = "python"
call = "jobs:record"
schedule = "* * * * *"
{extra}
"""


def test_tick_three_times_in_a_minute_records_one_run(project: Project, history: History) -> None:
    _project(project, EVERY_MINUTE.format(extra=""))
    first = project.cli("tick", "--json")
    assert first.returncode == 0, first.stderr
    assert first.json() == [], "a new job starts from now: nothing to catch up"
    moment = _away_from_minute_boundary()
    slot = _minute_start(moment)
    _set_cursor(project.state, "minutely", slot - timedelta(seconds=1))
    results = [project.cli("tick", "--json") for _ in range(3)]
    assert [len(result.json()) for result in results] == [1, 0, 0]
    runs = history("minutely")
    assert [(run["status"], run["scheduled_for"]) for run in runs] == [
        ("succeeded", slot.isoformat())
    ]
    assert [line[1] for line in _lines(project)] == [slot.isoformat()]


def test_racing_tick_processes_never_run_a_slot_twice(project: Project, history: History) -> None:
    _project(project, EVERY_MINUTE.format(extra='concurrency = "queue"'))
    assert project.cli("tick").returncode == 0
    moment = _away_from_minute_boundary()
    newest = _minute_start(moment)
    _set_cursor(project.state, "minutely", newest - timedelta(minutes=5, seconds=1))
    ticks = [project.popen("tick") for _ in range(4)]
    for tick in ticks:
        tick.communicate(timeout=120)
    assert {tick.returncode for tick in ticks} == {0}
    expected = [(newest - timedelta(minutes=n)).isoformat() for n in range(5, -1, -1)]
    ran = Counter(line[1] for line in _lines(project))
    assert sorted(ran) == expected
    assert set(ran.values()) == {1}
    runs = history("minutely")
    assert sorted(run["scheduled_for"] for run in runs) == expected
    assert {run["status"] for run in runs} == {"succeeded"}


def test_slots_older_than_their_grace_are_recorded_missed(
    project: Project, history: History
) -> None:
    # The tick runs in the first 59 seconds of a minute, so with a grace of 2m59s the
    # slot two minutes back is always within it and the one three minutes back never.
    _project(project, EVERY_MINUTE.format(extra='misfire_grace = "179s"'))
    assert project.cli("tick").returncode == 0
    moment = _away_from_minute_boundary()
    newest = _minute_start(moment)
    _set_cursor(project.state, "minutely", newest - timedelta(minutes=10, seconds=1))
    assert project.cli("tick").returncode == 0
    runs = history("minutely")
    assert len(runs) == 11, "every slot is accounted for"
    missed = [run for run in runs if run["status"] == "missed"]
    recent = [run for run in runs if run["status"] != "missed"]
    assert sorted(run["scheduled_for"] for run in missed) == [
        (newest - timedelta(minutes=n)).isoformat() for n in range(10, 2, -1)
    ]
    assert all("misfire_grace is 2m59s" in run["error"] for run in missed)
    # Within the grace: the first slot runs and, with concurrency = "skip", it is
    # still running when the next is claimed in the same pass.
    statuses = sorted(run["status"] for run in recent)
    assert statuses.count("succeeded") == 1
    assert set(statuses) <= {"succeeded", "skipped"}


def test_a_long_outage_is_summarised_not_dropped(project: Project, history: History) -> None:
    # A grace of 59s keeps the current minute's slot and misses every older one.
    _project(project, EVERY_MINUTE.format(extra='misfire_grace = "59s"'))
    assert project.cli("tick").returncode == 0
    moment = _away_from_minute_boundary()
    newest = _minute_start(moment)
    _set_cursor(project.state, "minutely", newest - timedelta(hours=3, seconds=1))
    assert project.cli("tick").returncode == 0
    runs = history("minutely")
    missed = [run for run in runs if run["status"] == "missed"]
    assert len(missed) == 101
    (summary,) = [run for run in missed if "recorded as one" in run["error"]]
    assert summary["error"].startswith("80 slots from ")
    assert [run["status"] for run in runs if run["status"] != "missed"] == ["succeeded"]


def test_disabled_jobs_never_run_on_schedule(project: Project, history: History) -> None:
    _project(project, EVERY_MINUTE.format(extra="enabled = false"))
    assert project.cli("tick").returncode == 0
    _set_cursor(project.state, "minutely", datetime.now(UTC) - timedelta(minutes=5))
    assert project.cli("tick", "--json").json() == []
    assert history("minutely") == []
    status = project.cli("status", "--json").json()
    assert [job["health"] for job in status["jobs"]] == ["disabled"]


def test_timeout_is_recorded_as_timed_out(project: Project, history: History) -> None:
    _project(
        project,
        """
        [jobs.stuck]
        task = "python"
        call = "jobs:wait"
        timeout = "1s"
        """,
    )
    started = time.monotonic()
    result = project.cli("run", "stuck", "--json")
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    (run,) = result.json()
    assert run["status"] == "timed_out"
    assert "timeout after 1s" in run["error"]
    assert not (project.path / "stuck.finished").exists()
    assert [r["status"] for r in history("stuck")] == ["timed_out"]


def test_retries_back_off_exponentially_then_succeed(project: Project, history: History) -> None:
    _project(
        project,
        """
        [jobs.flaky]
        task = "python"
        call = "jobs:flaky"
        retries = 3
        retry_backoff = "1s"
        """,
    )
    result = project.cli("run", "flaky", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(history("flaky"), key=lambda run: run["attempt"])
    assert [(run["attempt"], run["status"]) for run in runs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert [run["error"] for run in runs] == [
        "RuntimeError: failure number 1",
        "RuntimeError: failure number 2",
        None,
    ]
    assert runs[2]["rows_affected"] == 7
    assert len({run["scheduled_for"] for run in runs}) == 1, "retries keep their slot"
    assert [run["trigger"] for run in runs] == ["manual", "retry", "retry"]
    started = [datetime.fromisoformat(run["started_at"]) for run in runs]
    finished = [datetime.fromisoformat(run["finished_at"]) for run in runs]
    assert (started[1] - finished[0]).total_seconds() >= 1.0
    assert (started[2] - finished[1]).total_seconds() >= 2.0


def test_failures_are_counted_until_a_success(project: Project, history: History) -> None:
    _project(
        project,
        """
        [jobs.flaky]
        task = "python"
        call = "jobs:flaky"
        schedule = "@daily"
        """,
    )

    def failures() -> tuple[str, int]:
        (job,) = project.cli("status", "--json").json()["jobs"]
        return job["health"], job["consecutive_failures"]

    assert project.cli("run", "flaky").returncode == 1
    assert project.cli("run", "flaky").returncode == 1
    assert failures() == ("failing", 2)
    assert project.cli("run", "flaky").returncode == 0
    assert failures() == ("healthy", 0)


def test_queue_policy_runs_a_slot_after_the_running_one(project: Project, history: History) -> None:
    _project(
        project,
        """
        [jobs.minutely]
        task = "python"
        call = "jobs:record"
        args = { pause = 1.5 }
        schedule = "* * * * *"
        concurrency = "queue"
        """,
    )
    assert project.cli("tick").returncode == 0
    moment = _away_from_minute_boundary()
    newest = _minute_start(moment)
    _set_cursor(project.state, "minutely", newest - timedelta(minutes=1, seconds=1))
    assert project.cli("tick").returncode == 0
    lines = _lines(project)
    assert [line[1] for line in lines] == [
        (newest - timedelta(minutes=1)).isoformat(),
        newest.isoformat(),
    ]
    assert {run["status"] for run in history("minutely")} == {"succeeded"}


@contextmanager
def _serving(project: Project) -> Iterator[subprocess.Popen[str]]:
    """``dbkeeper start`` for the block, then stopped with SIGTERM unless the block did
    (killed only if it does not stop)."""
    process = project.popen("start", "--no-http")
    try:
        yield process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_start_sleeps_instead_of_polling(project: Project) -> None:
    _project(
        project,
        """
        [jobs.yearly]
        task = "python"
        call = "jobs:record"
        schedule = "0 0 1 1 *"
        """,
    )
    with _serving(project) as process:
        time.sleep(3)
        before = _cpu_seconds(process.pid)
        time.sleep(6)
        used = _cpu_seconds(process.pid) - before
    assert process.returncode == 0
    assert used < 0.3, f"idle scheduler used {used:.2f}s of CPU in 6s"


SECONDLY = """
[jobs.sleeper]
task = "python"
call = "jobs:wait"
args = {{ seconds = {seconds} }}
schedule = "* * * * * *"
"""


def test_sigterm_lets_a_running_job_finish(project: Project, history: History) -> None:
    _project(project, SECONDLY.format(seconds=2), keeper='shutdown_grace = "20s"')
    with _serving(project) as process:
        _wait_for(project.path / "sleeper.started")
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert (project.path / "sleeper.finished").exists()
    statuses = Counter(run["status"] for run in history("sleeper"))
    assert statuses["succeeded"] == 1
    assert set(statuses) <= {"succeeded", "skipped"}
    assert project.cli("status", "--json").json()["running"] == []


SIGTERM_WHILE_THE_LOOP_HOLDS_ITS_WAKE_LOCK = """
import os, signal, sys, time
from pathlib import Path
from dbkeeper import Keeper
from dbkeeper.scheduler import Scheduler

serve = Scheduler.serve


def serve_after_a_signal_in_the_worst_moment(self):
    # Event.wait holds its lock for a moment on waking; stop() takes that lock too.
    with self._wake._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
    serve(self)


Scheduler.serve = serve_after_a_signal_in_the_worst_moment
Keeper.from_config(Path(sys.argv[1])).start(http=False)
print("stopped")
"""


def test_sigterm_stops_start_whatever_lock_its_loop_holds(project: Project) -> None:
    # The handler runs on the main thread between any two steps: were the loop there,
    # holding the lock stop() needs, the process would wait for itself forever.
    _project(project, SECONDLY.format(seconds=0))
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_THE_LOOP_HOLDS_ITS_WAKE_LOCK, str(project.config)],
        cwd=project.path,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


def test_sigterm_past_the_grace_records_the_interruption(
    project: Project, history: History
) -> None:
    _project(project, SECONDLY.format(seconds=120), keeper='shutdown_grace = "1s"')
    with _serving(project) as process:
        _wait_for(project.path / "sleeper.started")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        took = time.monotonic() - sent
    assert process.returncode == 0
    assert took < 10
    assert not (project.path / "sleeper.finished").exists()
    interrupted = [run for run in history("sleeper") if run["status"] == "cancelled"]
    assert len(interrupted) == 1
    assert interrupted[0]["error"] == "cancelled: interrupted by shutdown"
    nodes = project.cli("status", "--json").json()["nodes"]
    assert [node["alive"] for node in nodes if node["role"] == "scheduler"] == [False]


def test_history_is_pruned_by_its_own_retention(project: Project, history: History) -> None:
    _project(
        project,
        """
        [jobs.once]
        task = "python"
        call = "jobs:record"
        """,
        keeper='history_retention = "1d"',
    )
    for _ in range(3):
        assert project.cli("run", "once").returncode == 0
    old_ids = [run["id"] for run in history("once")][1:]
    conn = sqlite3.connect(project.state)
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).replace(tzinfo=None).isoformat(" ")
    conn.executemany(
        "UPDATE dbkeeper_runs SET finished_at = ? WHERE id = ?",
        [(two_days_ago, run_id) for run_id in old_ids],
    )
    conn.commit()
    conn.close()
    assert project.cli("tick").returncode == 0
    remaining = history("once")
    assert len(remaining) == 1 and remaining[0]["id"] not in old_ids


@pytest.mark.parametrize("status", ["running", "queued"])
def test_history_retention_never_prunes_unfinished_runs(status: str, tmp_path: Path) -> None:
    from dbkeeper.store import StateStore

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    run_id = store.claim(
        "job",
        datetime(2020, 1, 1, tzinfo=UTC),
        status=RunStatus(status),
        trigger=Trigger.SCHEDULE,
        node=None,
    )
    assert run_id is not None
    assert store.prune(datetime.now(UTC)) == 0
    assert store.get_run(run_id) is not None


def test_start_claims_slots_ahead_but_never_starts_a_run_before_its_slot(
    project: Project, history: History
) -> None:
    _project(
        project,
        """
        [jobs.secondly]
        task = "python"
        call = "jobs:record"
        schedule = "every 1s"
        """,
    )
    with _serving(project) as process:
        time.sleep(4.5)
    assert process.returncode == 0
    runs = [run for run in history("secondly") if run["status"] == "succeeded"]
    assert len(runs) >= 3
    slots = sorted(datetime.fromisoformat(run["scheduled_for"]) for run in runs)
    assert len(set(slots)) == len(slots)
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in pairwise(slots))
    for run in runs:
        slot = datetime.fromisoformat(run["scheduled_for"])
        assert datetime.fromisoformat(run["started_at"]) >= slot
    claimed_ahead = [
        run
        for run in runs
        if datetime.fromisoformat(run["created_at"]) < datetime.fromisoformat(run["scheduled_for"])
    ]
    assert claimed_ahead, "no slot was claimed before it was due"


SLOT = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


@contextmanager
def _secondly(tmp_path: Path, *jobs: str) -> Iterator[Scheduler]:
    """A scheduler (in process) whose ``jobs`` are due every second, each accounted for
    up to the second before ``SLOT``."""
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "dbkeeper.toml").write_text(
        "\n".join(
            f'[jobs.{job}]\ntask = "python"\ncall = "jobs:record"\nschedule = "every 1s"\n'
            for job in jobs
        )
    )
    keeper = Keeper.from_config(tmp_path / "dbkeeper.toml")
    try:
        scheduler = keeper.scheduler("scheduler")
        for job in jobs:
            _set_cursor(tmp_path / "dbkeeper-state.db", job, SLOT - timedelta(seconds=1))
        yield scheduler
    finally:
        keeper.close()


def test_a_running_jobs_next_slot_is_left_to_be_claimed_when_due(tmp_path: Path) -> None:
    """Claiming ahead must not decide a running job's next slot early (it would be
    skipped although the run may end before the slot): that slot waits."""
    with _secondly(tmp_path, "busy", "idle") as scheduler:
        keeper = scheduler.keeper
        running = keeper.store.claim(
            "busy",
            SLOT - timedelta(seconds=1),
            attempt=2,
            status=RunStatus.RUNNING,
            trigger=Trigger.RETRY,
            node=scheduler.node.id,
        )
        assert running is not None
        claimed = scheduler.claim_due(SLOT - timedelta(milliseconds=100), SLOT)
        assert [(c.job, c.scheduled_for) for c in claimed] == [("idle", SLOT)]
        assert keeper.store.cursors() == {"busy": SLOT - timedelta(seconds=1), "idle": SLOT}
        # When the slot is due it is claimed, and the running job's policy decides.
        scheduler.claim_due(SLOT)
        assert keeper.store.cursors()["busy"] == SLOT
        skipped = keeper.store.runs(job="busy", status=[RunStatus.SKIPPED], limit=None)
        assert [run.scheduled_for for run in skipped] == [SLOT]


def test_a_slot_claimed_ahead_and_given_back_is_claimed_again_when_due(tmp_path: Path) -> None:
    """A node stopping between a claim made ahead and its slot gives the slot back: no
    run is left behind for it, and the slot is claimed again when it comes."""
    with _secondly(tmp_path, "idle") as scheduler:
        keeper = scheduler.keeper
        moment = SLOT - timedelta(milliseconds=100)
        (claimed,) = scheduler.claim_due(moment, SLOT)
        assert (claimed.scheduled_for, claimed.claimed_ahead_at) == (SLOT, moment)
        keeper.store.unclaim([(claimed.run_id, claimed.job, claimed.scheduled_for, moment)])
        assert keeper.store.runs(job="idle", limit=None) == []
        assert keeper.store.cursors() == {"idle": moment}
        (again,) = scheduler.claim_due(SLOT)
        assert (again.scheduled_for, again.claimed_ahead_at) == (SLOT, None)
        runs = keeper.store.runs(job="idle", limit=None)
        assert [(run.scheduled_for, run.status) for run in runs] == [(SLOT, RunStatus.RUNNING)]


def test_many_runs_succeeding_at_once_are_logged_in_one_line_failures_each_in_their_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = [f"job{number:02}" for number in range(12)]
    with _secondly(tmp_path, *jobs) as scheduler:
        specs = scheduler.keeper.jobs
        succeeded = [
            End(specs[job], run_id, Attempt(RunStatus.SUCCEEDED), False, SLOT)
            for run_id, job in enumerate(jobs, start=1)
        ]
        failed = End(specs["job00"], 13, Attempt(RunStatus.FAILED, error="boom"), False, SLOT)
        with caplog.at_level(logging.INFO, logger="dbkeeper.runner"):
            log_ends([*succeeded[:10], failed])
            log_ends([*succeeded, failed])
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        *(f"run {run_id} of {job} succeeded" for run_id, job in enumerate(jobs[:10], start=1)),
        "run 13 of job00 failed: boom",
        "run 13 of job00 failed: boom",
        "12 runs succeeded: " + ", ".join(jobs[:10]) + " and 2 more",
    ]
