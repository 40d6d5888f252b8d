"""Scheduler precision and overhead: dbkeeper vs APScheduler 3.x.

    python bench/scheduler.py [--jobs 1000] [--seconds 30] [--idle-jobs 100] [--idle-seconds 30]

1. Precision: JOBS no-op jobs, each due every second, for SECONDS seconds.
   - dbkeeper: one `dbkeeper start --no-http` process (SQLite state store, every run
     durably recorded); afterwards the history says, per job and slot, whether it ran
     once, never, or twice, and how late (start - slot).
   - APScheduler: a BackgroundScheduler with the same no-op jobs (IntervalTrigger of
     1 s, in memory, nothing recorded), lateness from its job-executed events.
   Prints slots missed/duplicated and lateness percentiles; target: none missed or
   duplicated, p99 below APScheduler's.
2. Idle CPU: `dbkeeper start` with IDLE_JOBS daily jobs, CPU time over IDLE_SECONDS as a
   share of one core; target < 1 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

DBKEEPER = Path(sys.executable).with_name("dbkeeper")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(name: str, lateness: list[float]) -> dict[str, float]:
    figures = {
        "p50": statistics.median(lateness) * 1000,
        "p99": percentile(lateness, 0.99) * 1000,
        "max": max(lateness) * 1000,
    }
    print(
        f"  {name:12} {len(lateness):7} runs, lateness p50 {figures['p50']:7.1f} ms, "
        f"p99 {figures['p99']:7.1f} ms, max {figures['max']:7.1f} ms"
    )
    return figures


def bench_dbkeeper(folder: Path, jobs: int, seconds: int) -> list[float]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "noop.py").write_text("def noop(ctx):\n    return None\n")
    lines = ["[keeper]", "workers = 32", ""]
    for number in range(jobs):
        lines += [
            f"[jobs.j{number:04d}]",
            'task = "python"',
            'call = "noop:noop"',
            'schedule = "every 1s"',
            'misfire_grace = "1h"',
            "",
        ]
    (folder / "dbkeeper.toml").write_text("\n".join(lines))
    process = subprocess.Popen(
        [str(DBKEEPER), "start", "--no-http"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    began = time.time()
    time.sleep(seconds)
    ended = time.time()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    history = subprocess.run(
        [str(DBKEEPER), "history", "--json", "-n", str(jobs * (seconds + 10))],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    runs = json.loads(history.stdout)
    # Judge whole slots inside the window, leaving the first and last second aside.
    first, last = int(began) + 2, int(ended) - 2
    seen: dict[tuple[str, int], int] = {}
    lateness = []
    for run in runs:
        slot = int(datetime.fromisoformat(run["scheduled_for"]).timestamp())
        if not first <= slot <= last:
            continue
        seen[(run["job"], slot)] = seen.get((run["job"], slot), 0) + 1
        if run["started_at"] and run["status"] == "succeeded":
            started = datetime.fromisoformat(run["started_at"]).timestamp()
            lateness.append(started - slot)
    expected = {(f"j{n:04d}", slot) for n in range(jobs) for slot in range(first, last + 1)}
    missed = len(expected - {key for key, count in seen.items() if count})
    doubled = sum(1 for count in seen.values() if count > 1)
    not_run = sum(1 for run in runs if run["status"] != "succeeded")
    print(
        f"  dbkeeper: {len(expected)} slots judged, {missed} missed, {doubled} run twice, "
        f"{not_run} runs not succeeded (skipped while the previous ran, or missed)"
    )
    return lateness


def bench_apscheduler(jobs: int, seconds: int) -> list[float]:
    from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
    from apscheduler.schedulers.background import BackgroundScheduler

    lateness: list[float] = []
    lock = threading.Lock()

    def record(event: JobExecutionEvent) -> None:
        with lock:
            lateness.append(time.time() - event.scheduled_run_time.timestamp())

    scheduler = BackgroundScheduler(
        executors={"default": {"type": "threadpool", "max_workers": 32}}
    )
    scheduler.add_listener(record, EVENT_JOB_EXECUTED)
    start = datetime.fromtimestamp(int(time.time()) + 2).astimezone()
    for number in range(jobs):
        scheduler.add_job(
            lambda: None,
            "interval",
            seconds=1,
            start_date=start,
            id=f"j{number}",
            misfire_grace_time=3600,
            coalesce=False,
        )
    scheduler.start()
    time.sleep(seconds)
    scheduler.shutdown(wait=True)
    return lateness


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_idle(folder: Path, jobs: int, seconds: int) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "noop.py").write_text("def noop(ctx):\n    return None\n")
    lines = []
    for number in range(jobs):
        lines += [
            f"[jobs.daily{number:03d}]",
            'task = "python"',
            'call = "noop:noop"',
            f'schedule = "{number % 60} 3 * * *"',
            "",
        ]
    (folder / "dbkeeper.toml").write_text("\n".join(lines))
    process = subprocess.Popen(
        [str(DBKEEPER), "start"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(5)  # start-up (imports, schema) is not idling
        before, began = cpu_seconds(process.pid), time.monotonic()
        time.sleep(seconds)
        used = cpu_seconds(process.pid) - before
        share = 100 * used / (time.monotonic() - began)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    print(f"  idle CPU of dbkeeper start with {jobs} daily jobs: {share:.2f} % of a core")
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--idle-jobs", type=int, default=100)
    parser.add_argument("--idle-seconds", type=int, default=30)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dbkeeper-scheduler-bench-"))
    try:
        print(f"{args.jobs} jobs every second for {args.seconds} s:")
        ours = report("dbkeeper", bench_dbkeeper(folder / "precision", args.jobs, args.seconds))
        theirs = report("APScheduler", bench_apscheduler(args.jobs, args.seconds))
        print(f"  p99 lateness: dbkeeper / APScheduler = {ours['p99'] / theirs['p99']:.2f}x")
        bench_idle(folder / "idle", args.idle_jobs, args.idle_seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
