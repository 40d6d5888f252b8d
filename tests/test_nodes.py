"""Several `dbkeeper start` processes sharing one PostgreSQL state store."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from typing import Any

import pytest

from tests.conftest import Project

JOBS_MODULE = """
import os
import time
from pathlib import Path

LOG = Path(__file__).with_name("ran.log")


def record(ctx, pause=0.0):
    time.sleep(pause)
    with LOG.open("a") as log:
        log.write(f"{ctx.job.name} {ctx.scheduled_for.isoformat()} {os.getpid()}\\n")
    return {"pid": os.getpid()}


def slow(ctx, seconds=30.0):
    marker = Path(__file__).with_name(f"slow-{ctx.attempt}.started")
    written = marker.with_suffix(".tmp")  # renamed: the test never reads it half-written
    written.write_text(str(os.getpid()))
    os.replace(written, marker)
    ctx.token.wait(seconds)
    ctx.check_cancelled()
"""


def _setup(project: Project, pg_url: str, jobs: str) -> None:
    (project.path / "nodejobs.py").write_text(JOBS_MODULE)
    project.write_config(_config(pg_url, jobs))


def _config(pg_url: str, jobs: str) -> str:
    return f"""
        [keeper]
        state = "{pg_url}"
        heartbeat = "1s"
        lease = "4s"
        shutdown_grace = "10s"

        {jobs}
    """


def _stop(processes: list[subprocess.Popen[str]]) -> list[str]:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    errors = []
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        errors.append(stderr)
    return errors


@pytest.mark.slow
def test_three_nodes_run_each_slot_exactly_once(
    project: Project, pg_url: str, history: Callable[..., list[dict[str, Any]]]
) -> None:
    _setup(
        project,
        pg_url,
        """
            [jobs.beat]
            task = "python"
            call = "nodejobs:record"
            args = { pause = 0.3 }
            schedule = "every 2s"
            misfire_grace = "1m"
            """,
    )
    nodes = [project.popen("start", "--no-http") for _ in range(3)]
    try:
        time.sleep(30)
        status = project.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        alive = [node for node in status.json()["nodes"] if node["alive"]]
        assert len(alive) == 3, status.json()["nodes"]
        assert {node["pid"] for node in alive} == {node.pid for node in nodes}
    finally:
        errors = _stop(nodes)
    assert [node.returncode for node in nodes] == [0, 0, 0], errors

    lines = (project.path / "ran.log").read_text().splitlines()
    slots = Counter(line.split()[1] for line in lines)
    assert len(slots) >= 10, lines
    assert max(slots.values()) == 1, [slot for slot, n in slots.items() if n > 1]
    moments = sorted(datetime.fromisoformat(slot) for slot in slots)
    gaps = {(b - a).total_seconds() for a, b in pairwise(moments)}
    assert gaps == {2.0}, "every 2s slot between the first and the last ran"

    runs = history("beat")
    succeeded = [run for run in runs if run["status"] == "succeeded"]
    assert sorted(run["scheduled_for"] for run in succeeded) == sorted(
        run["scheduled_for"] for run in runs if run["status"] != "missed"
    )
    assert len(succeeded) == len(lines)
    workers = {line.split()[2] for line in lines}
    assert len(workers) >= 2, "the slots were shared among the nodes"


@pytest.mark.slow
def test_killed_node_run_is_abandoned_and_retried_on_a_live_node(
    project: Project, pg_url: str, history: Callable[..., list[dict[str, Any]]]
) -> None:
    _setup(
        project,
        pg_url,
        """
            [jobs.slow]
            task = "python"
            call = "nodejobs:slow"
            schedule = "every 10s"
            retries = 1
            retry_backoff = "1s"
            """,
    )
    nodes = [project.popen("start", "--no-http"), project.popen("start", "--no-http")]
    try:
        marker = project.path / "slow-1.started"
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.1)
        victim_pid = int(marker.read_text())
        (victim,) = [node for node in nodes if node.pid == victim_pid]
        (survivor,) = [node for node in nodes if node.pid != victim_pid]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        deadline = time.monotonic() + 60
        while not (project.path / "slow-2.started").exists():
            assert time.monotonic() < deadline, history("slow")
            time.sleep(0.2)
        # Attempt 2 waits 30 s; stopping the survivor records it as cancelled.
        status = project.cli("status", "--json").json()
    finally:
        _stop(nodes)

    pids = {node["id"]: node["pid"] for node in status["nodes"]}
    alive = {node["pid"]: node["alive"] for node in status["nodes"]}
    assert alive == {victim_pid: False, survivor.pid: True}
    runs = history("slow")
    (first,) = [run for run in runs if run["attempt"] == 1 and run["status"] == "abandoned"]
    (second,) = [run for run in runs if run["attempt"] == 2]
    assert second["scheduled_for"] == first["scheduled_for"]
    assert pids[first["node"]] == victim_pid
    assert pids[second["node"]] == survivor.pid
    assert second["status"] == "cancelled"
    assert int((project.path / "slow-2.started").read_text()) == survivor.pid


PURGE_TWO_KINDS = """
[databases.app]
url = "{pg_url}"

[jobs.purge-a]
task = "purge"
database = "app"
table = "events"
column = "created_at"
older_than = "30d"
where = {{ kind = "a" }}

[jobs.purge-b]
task = "purge"
database = "app"
table = "events"
column = "created_at"
older_than = "30d"
where = {{ kind = "b" }}
"""

# Every DELETE statement on events logs which session ran it and when, and takes a while,
# so two purges working at once would interleave in purge_log.
SLOW_DELETE_LOG = """
CREATE TABLE events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, kind text);
CREATE INDEX ON events (created_at);
INSERT INTO events (created_at, kind)
    SELECT now() - (g % 90) * interval '1 day' - interval '1 hour',
           CASE g % 2 WHEN 0 THEN 'a' ELSE 'b' END
    FROM generate_series(1, 120000) AS g;
CREATE TABLE purge_log (session text, began timestamptz, ended timestamptz);
CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE began timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_sleep(0.1);
    INSERT INTO purge_log VALUES (current_setting('application_name'), began, clock_timestamp());
    RETURN NULL;
END $$;
CREATE TRIGGER events_log_delete AFTER DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION log_delete();
"""


@pytest.mark.slow
def test_two_purges_of_one_table_never_overlap_across_nodes(
    project: Project, pg_url: str, history: Callable[..., list[dict[str, Any]]]
) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SLOW_DELETE_LOG)
        expected_left = conn.execute(
            "SELECT count(*) FROM events WHERE created_at >= now() - interval '30 days'"
        ).fetchone()
    project.write_config(_config(pg_url, PURGE_TWO_KINDS.format(pg_url=pg_url)))
    runs = [project.popen("run", "purge-a"), project.popen("run", "purge-b")]
    seen_running = ""
    deadline = time.monotonic() + 60
    while any(run.poll() is None for run in runs) and time.monotonic() < deadline:
        text = project.cli("status").stdout
        if "purge-" in text.partition("running")[2]:
            seen_running = text
        time.sleep(0.05)
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs

    recorded = history()
    assert sorted((run["job"], run["status"]) for run in recorded) == [
        ("purge-a", "succeeded"),
        ("purge-b", "succeeded"),
    ]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM events").fetchone()
        old_left = conn.execute(
            "SELECT count(*) FROM events WHERE created_at < now() - interval '30 days'"
        ).fetchone()
        log = conn.execute("SELECT session, began, ended FROM purge_log ORDER BY began").fetchall()
    assert left == expected_left
    assert old_left == (0,)
    assert {session for session, _, _ in log} == {
        f"dbkeeper {run['job']} run {run['id']}" for run in recorded
    }
    spans = {
        session: (
            min(b for s, b, _ in log if s == session),
            max(e for s, _, e in log if s == session),
        )
        for session, _, _ in log
    }
    (first, second) = sorted(spans.values())
    assert first[1] <= second[0], f"the two purges overlapped: {spans}"
    assert len(log) >= 6, "each purge took several batches"
    assert "nodes" in seen_running and "purge-" in seen_running, "status listed runs in flight"
