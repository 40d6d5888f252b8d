"""Job chains: `after`, `after_any`, `after_failure`, `run --with-downstream`, cycles."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dbkeeper import Keeper
from dbkeeper.models import RunStatus, Trigger
from tests.conftest import Project, Receiver, wait_for
from tests.test_nodes import _stop

History = Callable[..., list[dict[str, Any]]]


def _trail(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE trail (seq INTEGER PRIMARY KEY AUTOINCREMENT, step TEXT)")


def _step(name: str, extra: str = "", sql: str | None = None) -> str:
    statement = sql or f"INSERT INTO trail (step) VALUES ('{name}')"
    return f"""
        [jobs.{name}]
        task = "sql"
        database = "app"
        sql = "{statement}"
        {extra}
    """


def _noop(name: str, extra: str = "") -> str:
    """A job that does nothing and succeeds, with ``extra`` keys."""
    return f'\n[jobs.{name}]\ntask = "command"\ncommand = ["true"]\n{extra}\n'


def _steps(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [step for (step,) in conn.execute("SELECT step FROM trail ORDER BY seq")]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.slow
def test_three_step_chain_runs_in_order_once_per_head_slot_on_two_nodes(
    project: Project, pg_url: str, history: History
) -> None:
    _trail(project.path / "app.db")
    project.write_config(
        f"""
        [keeper]
        state = "{pg_url}"
        heartbeat = "1s"
        lease = "5s"

        [databases.app]
        url = "sqlite:///app.db"
        """
        + _step("head", 'schedule = "every 2s"\nmisfire_grace = "1m"')
        + _step("middle", 'after = ["head"]')
        + _step("tail", 'after = ["middle"]')
    )
    nodes = [project.popen("start", "--no-http") for _ in range(2)]
    try:
        wait_for(
            lambda: len([r for r in history("head") if r["status"] == "succeeded"]) >= 4,
            60,
            "the head did not run four times",
        )
        paused = project.cli("job", "pause", "head", "--by", "tester", "--reason", "enough")
        assert paused.returncode == 0, paused.stderr

        def settled() -> bool:
            runs = history()
            heads = [r for r in runs if r["job"] == "head" and r["status"] == "succeeded"]
            tails = [r for r in runs if r["job"] == "tail"]
            busy = [r for r in runs if r["status"] in ("queued", "running")]
            return not busy and len(tails) == len(heads)

        wait_for(settled, 30, "the chains did not finish")
        time.sleep(4)  # two more head slots pass while it is paused
    finally:
        errors = _stop(nodes)
    assert [node.returncode for node in nodes] == [0, 0], errors

    runs = {run["id"]: run for run in history()}
    heads = [r for r in runs.values() if r["job"] == "head"]
    middles = [r for r in runs.values() if r["job"] == "middle"]
    tails = [r for r in runs.values() if r["job"] == "tail"]
    assert {r["status"] for r in heads + middles + tails} == {"succeeded"}
    assert len(heads) >= 4
    # Exactly one middle per head run and one tail per middle run, whichever node ran it.
    assert sorted(r["upstream_run"] for r in middles) == sorted(r["id"] for r in heads)
    assert sorted(r["upstream_run"] for r in tails) == sorted(r["id"] for r in middles)
    assert {r["trigger"] for r in middles + tails} == {"upstream"}
    for run in middles + tails:
        upstream = runs[run["upstream_run"]]
        assert _at(run["started_at"]) >= _at(upstream["finished_at"])
    steps = _steps(project.path / "app.db")
    assert steps == ["head", "middle", "tail"] * len(heads)

    # The pause is recorded with who and when, and no head slot ran after it.
    shown = project.cli("job", "show", "head", "--json").json()
    (change,) = [c for c in shown["changes"] if c["action"] == "paused"]
    assert change["by"] == "tester" and change["detail"] == {"reason": "enough"}
    assert shown["paused"]["by"] == "tester" and shown["health"] == "disabled"
    assert max(_at(r["scheduled_for"]) for r in heads) < _at(change["at"])


FAILING_CHAIN = """
    [keeper]
    state = "sqlite:///state.db"

    [databases.app]
    url = "sqlite:///app.db"

    [notify.ops]
    url = "{url}"
    on = ["failure"]
"""


def test_failing_middle_step_stops_the_chain_alerts_and_starts_its_cleanup(
    project: Project, receiver: Receiver, history: History
) -> None:
    _trail(project.path / "app.db")
    project.write_config(
        FAILING_CHAIN.format(url=receiver.url)
        + _step("head")
        + _step(
            "middle",
            'after = ["head"]\nnotify = ["ops"]',
            sql="INSERT INTO no_such_table (step) VALUES ('middle')",
        )
        + _step("tail", 'after = ["middle"]')
        + _step("cleanup", 'after_failure = ["middle"]')
    )
    result = project.cli("run", "head", "--with-downstream")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "middle: failed" in result.stdout
    assert "chain stopped at middle: not run: tail" in result.stdout

    runs = {run["job"]: run for run in history()}
    assert set(runs) == {"head", "middle", "cleanup"}, "tail never ran"
    assert runs["head"]["status"] == "succeeded"
    assert runs["middle"]["status"] == "failed"
    assert "no_such_table" in runs["middle"]["error"]
    assert runs["middle"]["result"]["chain_stopped"] == ["tail"]
    assert runs["middle"]["upstream_run"] == runs["head"]["id"]
    assert runs["cleanup"]["status"] == "succeeded"
    assert runs["cleanup"]["upstream_run"] == runs["middle"]["id"]
    assert _steps(project.path / "app.db") == ["head", "cleanup"]

    (alert,) = receiver.of_type("failure")
    assert alert["title"] == "dbkeeper: middle failed"
    assert "The chain stops here; not run: tail." in alert["message"]

    # Without --with-downstream a manual run is just that run.
    alone = project.cli("run", "head")
    assert alone.returncode == 0, alone.stderr
    assert len(history()) == 4


def test_a_cycle_is_refused_at_load_naming_its_jobs(project: Project) -> None:
    project.write_config(
        _noop("a", 'after = ["c"]')
        + _noop("b", 'after = ["a"]')
        + _noop("c", 'after_failure = ["b"]')
    )
    for command in (["check"], ["jobs"], ["start", "--no-http"]):
        result = project.cli(*command)
        assert result.returncode == 1, command
        message = result.stderr.strip()
        found = re.fullmatch(
            r"error: .*dbkeeper\.toml:(\d+): job '(\w)', key '(after|after_failure)': "
            r"the jobs (\w) → (\w) → (\w) → (\w) form a cycle: none of them could start",
            message,
        )
        assert found, message
        line, job, key, *cycle = found.groups()
        assert set(cycle) == {"a", "b", "c"} and cycle[0] == cycle[-1] == job
        source = project.config.read_text().splitlines()
        assert source[int(line) - 1].strip().startswith(key)
    assert not project.state.exists(), "nothing was started"


def test_unknown_upstream_and_self_reference_are_located(project: Project) -> None:
    project.write_config(
        _noop("a", 'after = ["fetch-catalog"]') + _noop("b", 'after_failure = ["b"]')
    )
    result = project.cli("check")
    assert result.returncode == 1
    lines = result.stderr.strip().removeprefix("error: ").splitlines()
    assert lines == [
        "dbkeeper.toml:5: job 'a', key 'after': unknown job 'fetch-catalog' (jobs: a, b)",
        "dbkeeper.toml:10: job 'b', key 'after_failure': a job cannot come after itself",
    ]


def _count(keeper: Keeper, job: str) -> list[Any]:
    return keeper.store.runs(job=job, limit=None)


def test_after_waits_for_all_and_after_any_for_each(tmp_path: Path) -> None:
    (tmp_path / "dbkeeper.toml").write_text(
        '[keeper]\nstate = "sqlite:///state.db"\n'
        + _noop("a")
        + _noop("b")
        + _noop("both", 'after = ["a", "b"]')
        + _noop("either", 'after = ["a", "b"]\nafter_any = true\nconcurrency = "queue"')
        + _noop("later", 'after = ["either"]')
    )
    keeper = Keeper.from_config(tmp_path / "dbkeeper.toml")
    try:
        a = keeper.run("a", with_downstream=True)
        assert _count(keeper, "both") == []
        (first,) = _count(keeper, "either")
        assert first.upstream_run == a.id and first.status is RunStatus.QUEUED
        assert first.trigger is Trigger.UPSTREAM

        b = keeper.run("b", with_downstream=True)
        (both,) = _count(keeper, "both")
        assert both.upstream_run == b.id
        assert [run.upstream_run for run in _count(keeper, "either")] == [b.id, a.id]

        keeper.run("a", with_downstream=True)  # a new round: b has not succeeded since
        assert len(_count(keeper, "both")) == 1
        keeper.run("a")  # a plain manual run starts nothing
        assert len(_count(keeper, "either")) == 3

        # The queued runs are picked up by a tick; each starts `later` once.
        keeper.pause("later", by="test")
        ran = keeper.tick()
        assert sorted(run.job for run in ran) == ["both", "either", "either", "either"]
        later = _count(keeper, "later")
        assert [run.status for run in later] == [RunStatus.SKIPPED] * 3
        assert all("the job is paused" in (run.error or "") for run in later)
        assert sorted(run.upstream_run for run in later) == sorted(
            run.id for run in _count(keeper, "either")
        )
        overview = {row["name"]: row for row in keeper.overview()}
        assert overview["both"]["schedule_words"] == "after all of a, b succeed"
        assert overview["either"]["schedule_words"] == "after any of a, b succeeds"
        assert overview["a"]["downstream"] == ["both", "either", "later"]
    finally:
        keeper.close()


def test_a_killed_run_counts_as_a_failure_of_its_chain(project: Project, history: History) -> None:
    project.write_config(
        '[jobs.slow]\ntask = "command"\ncommand = ["sleep", "30"]\n'
        + _noop("tail", 'after = ["slow"]')
        + _noop("cleanup", 'after_failure = ["slow"]')
    )
    runner = project.popen("run", "slow", "--with-downstream")
    wait_for(lambda: [r for r in history("slow") if r["status"] == "running"], 30, "not started")
    runner.kill()
    runner.communicate(timeout=10)

    ticked = project.cli("tick", "--json")  # finds the run's process gone
    assert ticked.returncode == 0, ticked.stderr
    runs = {run["job"]: run for run in history()}
    assert set(runs) == {"slow", "cleanup"}
    assert runs["slow"]["status"] == "abandoned"
    assert runs["cleanup"]["status"] == "succeeded"
    assert runs["cleanup"]["upstream_run"] == runs["slow"]["id"]
    assert [run["job"] for run in ticked.json()] == ["cleanup"]


def test_a_node_stopped_before_a_retry_starts_the_jobs_after_the_failure(
    project: Project, history: History
) -> None:
    project.write_config(
        '[keeper]\nshutdown_grace = "5s"\n'
        '[jobs.flaky]\ntask = "command"\ncommand = ["false"]\nschedule = "every 2s"\n'
        'retries = 1\nretry_backoff = "1h"\n' + _noop("cleanup", 'after_failure = ["flaky"]')
    )
    node = project.popen("start", "--no-http")
    try:
        wait_for(lambda: [r for r in history("flaky") if r["status"] == "failed"], 30, "no run")
    finally:
        errors = _stop([node])
    assert node.returncode == 0, errors
    failed = [r["id"] for r in history("flaky") if r["status"] == "failed"]
    cleanups = history("cleanup")
    assert failed and sorted(r["upstream_run"] for r in cleanups) == sorted(failed)
    assert {r["status"] for r in cleanups} == {"queued"}, "for the next node to run"
