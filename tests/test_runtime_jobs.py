"""Jobs defined at runtime: through the API on two nodes, the CLI and Python."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from dbkeeper import ConfigError, Keeper
from dbkeeper.store import SCHEMA_VERSION, StateStore
from tests.conftest import Project, wait_for
from tests.test_api import free_port
from tests.test_nodes import _stop

TOKEN = "runtime-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
History = Callable[..., list[dict[str, Any]]]

CONFIG = """
[keeper]
state = "{state}"
heartbeat = "1s"
lease = "5s"

[keeper.http]
listen = "127.0.0.1:${{PORT:-8077}}"
token = "{token}"

[databases.app]
url = "sqlite:///app.db"

[jobs.nightly]
task = "vacuum"
database = "app"
schedule = "0 3 * * *"
"""

TENANT_JOB = {
    "task": "sql",
    "database": "app",
    "sql": "INSERT INTO trail (job) VALUES ('user_42_cleanup')",
    "schedule": "every 2s",
    "misfire_grace": "1m",
}
# The same mistakes, once as a config file's job and once as an API body.
BAD_TOML = """
[databases.app]
url = "sqlite:///app.db"

[jobs.bad]
task = "purge"
database = "nowhere"
table = "trail"
column = "at"
older_than = "30x"
schedule = "61 * * * *"
colour = "blue"
"""
BAD_BODY = {
    "task": "purge",
    "database": "nowhere",
    "table": "trail",
    "column": "at",
    "older_than": "30x",
    "schedule": "61 * * * *",
    "colour": "blue",
}


@dataclass
class Node:
    url: str
    process: subprocess.Popen[str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=30, **kwargs)

    def up(self) -> bool:
        assert self.process.poll() is None, self.process.communicate()
        try:
            return self.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False


def _prepare(project: Project, state: str) -> None:
    with sqlite3.connect(project.path / "app.db") as conn:
        conn.execute("CREATE TABLE trail (seq INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT)")
    project.write_config(CONFIG.format(state=state, token=TOKEN))


@pytest.fixture
def nodes(project: Project, pg_url: str) -> Iterator[list[Node]]:
    _prepare(project, pg_url)
    started = []
    for _ in range(2):
        port = free_port()
        process = project.popen("start", env=project.env(PORT=str(port)))
        started.append(Node(f"http://127.0.0.1:{port}", process))
    for node in started:
        wait_for(lambda node=node: node.up(), 30, "a node did not come up")
    try:
        yield started
    finally:
        errors = _stop([node.process for node in started])
        assert [node.process.returncode for node in started] == [0, 0], errors


def _slots(runs: list[dict[str, Any]], after: datetime | None = None) -> list[datetime]:
    moments = sorted(datetime.fromisoformat(run["scheduled_for"]) for run in runs)
    return [moment for moment in moments if after is None or moment > after]


def _config_message(project: Project) -> list[str]:
    """What `dbkeeper check` says about BAD_TOML, without the file:line in front."""
    (project.path / "bad.toml").write_text(BAD_TOML)
    result = project.cli("-c", "bad.toml", "check")
    assert result.returncode == 1
    lines = result.stderr.strip().removeprefix("error: ").splitlines()
    assert all(line.startswith("bad.toml:") for line in lines), lines
    return [line.split(": ", 1)[1] for line in lines]


@pytest.mark.slow
def test_api_job_runs_once_per_slot_on_two_nodes_changes_pauses_and_goes(
    project: Project, nodes: list[Node], history: History
) -> None:
    first, second = nodes
    name = "user_42_cleanup"
    assert first.send("POST", f"/api/jobs/{name}", json=TENANT_JOB).status_code == 401

    added = first.send("POST", f"/api/jobs/{name}?by=app", json=TENANT_JOB, headers=AUTH)
    assert added.status_code == 201, added.text
    assert added.json()["source"] == "runtime"
    assert added.json()["schedule_words"] == "Every 2 seconds"
    again = first.send("POST", f"/api/jobs/{name}", json=TENANT_JOB, headers=AUTH)
    assert again.status_code == 409 and "exists" in again.json()["error"]
    # The other node knows it without a restart.
    wait_for(lambda: second.get(f"/api/jobs/{name}").status_code == 200, 5, "not picked up")

    wait_for(lambda: len(history(name)) >= 5, 30, "the runtime job did not run")
    runs = history(name)
    assert {run["status"] for run in runs} == {"succeeded"}
    slots = _slots(runs)
    assert len(set(slots)) == len(slots), "a slot ran twice"
    assert {(b - a).total_seconds() for a, b in pairwise(slots)} == {2.0}

    # A new schedule takes effect from its next slot: no slot of the old one after it.
    changed_body = {**TENANT_JOB, "schedule": "every 5s"}
    changed = second.send("PUT", f"/api/jobs/{name}", json=changed_body, headers=AUTH)
    changed_at = datetime.now(UTC)
    assert changed.status_code == 200, changed.text
    assert changed.json()["schedule_words"] == "Every 5 seconds"
    wait_for(lambda: len(_slots(history(name), changed_at)) >= 2, 30, "no run on the new schedule")
    new_slots = _slots(history(name), changed_at)
    assert all(slot.second % 5 == 0 for slot in new_slots), new_slots
    assert (new_slots[0] - changed_at).total_seconds() <= 5, "the first new slot ran"
    assert {(b - a).total_seconds() for a, b in pairwise(new_slots)} == {5.0}

    # Pause and resume, recorded with who and when; the paused slots are not made up.
    paused = first.send("POST", f"/api/jobs/{name}/pause?by=alice&reason=maintenance", headers=AUTH)
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"]["by"] == "alice (api from 127.0.0.1)"
    paused_at = datetime.now(UTC)
    time.sleep(7)
    resumed = second.send("POST", f"/api/jobs/{name}/resume?by=bob", headers=AUTH)
    assert resumed.status_code == 200 and resumed.json()["paused"] is None
    resumed_at = datetime.now(UTC)
    wait_for(lambda: _slots(history(name), resumed_at), 15, "no run after resuming")
    during = [s for s in _slots(history(name), paused_at) if s < resumed_at]
    assert during == [], "nothing ran, and nothing was recorded, while paused"

    # Deleting stops it and keeps its history.
    before = len(history(name))
    removed = first.send("DELETE", f"/api/jobs/{name}?by=app", headers=AUTH)
    assert removed.status_code == 200, removed.text
    removed_at = datetime.now(UTC)
    wait_for(lambda: second.get(f"/api/jobs/{name}").status_code == 404, 5, "still known")
    time.sleep(6)
    kept = history(name)
    assert len(kept) >= before and not _slots(kept, removed_at)
    assert len(second.get(f"/api/runs?job={name}&limit=1000").json()) == len(kept)
    with sqlite3.connect(project.path / "app.db") as conn:
        (inserted,) = conn.execute("SELECT count(*) FROM trail").fetchone()
    assert inserted == len(kept), "one insert per recorded run"

    changes = project.cli("history", name).stdout
    for action, by in [
        ("added", "app (api"),
        ("changed", "api (api"),
        ("paused", "alice (api"),
        ("resumed", "bob (api"),
        ("removed", "app (api"),
    ]:
        assert any(action in line and by in line for line in changes.splitlines()), changes


def test_api_refuses_malformed_jobs_as_a_config_file_would_and_keeps_file_jobs(
    project: Project, pg_url: str
) -> None:
    _prepare(project, pg_url)
    expected = _config_message(project)
    assert [line.split(":")[0] for line in expected] == [
        "job 'bad', key 'database'",
        "job 'bad', key 'older_than'",
        "job 'bad', key 'schedule'",
        "job 'bad', key 'colour'",
    ]
    keeper = Keeper.from_config(project.config)
    try:
        with pytest.raises(ConfigError) as raised:
            keeper.add_job("bad", **BAD_BODY)
        assert raised.value.problems == expected
        assert "bad" not in keeper.jobs
    finally:
        keeper.close()

    cli = project.cli("job", "add", "bad", *[f"{key}={value}" for key, value in BAD_BODY.items()])
    assert cli.returncode == 1
    assert cli.stderr.strip().removeprefix("error: ").splitlines() == expected

    read_only = project.cli("job", "set", "nightly", "schedule=@hourly")
    assert read_only.returncode == 1
    assert (
        "job 'nightly' is defined in" in read_only.stderr and "dbkeeper.toml:" in read_only.stderr
    )
    assert project.cli("jobs", "--json").json()[0]["schedule"] == "0 3 * * *"


@pytest.mark.slow
def test_api_errors_name_the_key_and_change_nothing(project: Project, nodes: list[Node]) -> None:
    first, _ = nodes
    expected = _config_message(project)
    answer = first.send("POST", "/api/jobs/bad", json=BAD_BODY, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["problems"] == expected
    assert first.get("/api/jobs/bad").status_code == 404

    missing_table = {**TENANT_JOB, "task": "purge", "table": "nope", "column": "at"}
    missing_table.pop("sql")
    missing_table["older_than"] = "30d"
    answer = first.send("PUT", "/api/jobs/t1", json=missing_table, headers=AUTH)
    assert answer.status_code == 422 and "nope" in answer.json()["error"]

    for method in ("PUT", "DELETE"):
        kept = first.send(method, "/api/jobs/nightly", json=TENANT_JOB, headers=AUTH)
        assert kept.status_code == 403, kept.text
        assert "defined in" in kept.json()["error"] and "dbkeeper.toml:" in kept.json()["error"]
    command = {"task": "command", "command": ["rm", "-rf", "/"], "schedule": "@daily"}
    refused = first.send("POST", "/api/jobs/evil", json=command, headers=AUTH)
    assert refused.status_code == 403 and "job_tasks" in refused.json()["error"]
    assert first.get("/api/jobs/evil").status_code == 404
    assert [job["name"] for job in first.get("/api/jobs").json()] == ["nightly"]


def test_python_and_cli_define_jobs_every_interface_sees(
    project: Project, history: History
) -> None:
    _prepare(project, "sqlite:///state.db")
    keeper = Keeper.from_config(project.config)
    try:
        keeper.add_job("from-python", by="app", **{**TENANT_JOB, "schedule": "@daily"})
    finally:
        keeper.close()
    added = project.cli(
        "job", "add", "from-cli", "task=sql", "database=app",
        "sql=INSERT INTO trail (job) VALUES ('from-cli')", "retries=2", "after=[\"from-python\"]",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = {job["name"]: job for job in project.cli("jobs", "--json").json()}
    assert listed["from-python"]["source"] == "runtime"
    assert listed["from-python"]["downstream"] == ["from-cli"]
    assert listed["from-cli"]["schedule_words"] == "after from-python succeeds"
    shown = project.cli("job", "show", "from-cli", "--json").json()
    assert shown["options"]["retries"] == 2 and shown["settings"]["retries"] == 2

    chained = project.cli("run", "from-python", "--with-downstream")
    assert chained.returncode == 0, chained.stdout + chained.stderr
    assert [run["job"] for run in history()] == ["from-cli", "from-python"]

    blocked = project.cli("job", "remove", "from-python")
    assert blocked.returncode == 1 and "comes before from-cli" in blocked.stderr
    changed = project.cli("job", "set", "from-cli", "--unset", "after", "schedule=@hourly")
    assert changed.returncode == 0, changed.stderr
    assert project.cli("job", "remove", "from-python").returncode == 0
    assert [run["job"] for run in history("from-python")] == ["from-python"]
    unknown = project.cli("history", "never-was")
    assert unknown.returncode == 1 and "no job named 'never-was'" in unknown.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_version_2_state_store_is_upgraded_in_place(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'state.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    StateStore(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:  # take it back to what version 2 had
        conn.execute(text("DROP INDEX dbkeeper_runs_upstream"))
        for table, column in [
            ("dbkeeper_runs", "upstream_run"),
            ("dbkeeper_runs", "with_downstream"),
            ("dbkeeper_jobs", "paused_at"),
            ("dbkeeper_jobs", "paused_by"),
            ("dbkeeper_jobs", "pause_reason"),
        ]:
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("DROP TABLE dbkeeper_job_definitions"))
        conn.execute(text("DROP TABLE dbkeeper_job_changes"))
        conn.execute(text("DELETE FROM dbkeeper_meta WHERE key = 'jobs_version'"))
        conn.execute(text("UPDATE dbkeeper_meta SET value = '2' WHERE key = 'schema_version'"))
        conn.execute(
            text(
                "INSERT INTO dbkeeper_runs (job, scheduled_for, attempt, trigger, status, "
                "created_at, progress) VALUES ('old', '2026-01-01 00:00:00', 1, 'schedule', "
                "'succeeded', '2026-01-01 00:00:00', 100)"
            )
        )
    engine.dispose()
    store = StateStore(url)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 3
        (old,) = store.runs(job="old")
        assert old.with_downstream is True and old.upstream_run is None
        assert store.jobs_version() == 0 and store.definitions() == []
    finally:
        store.close()


def test_the_package_names_load_when_used_and_the_entry_point_loads_nothing_first() -> None:
    """The command's entry point turns the collector off before the imports start; that
    holds only while importing the package does not import them itself."""
    probe = (
        "import sys, dbkeeper.__main__; print('sqlalchemy' in sys.modules); "
        "import dbkeeper, dbkeeper.keeper; print(dbkeeper.Keeper is dbkeeper.keeper.Keeper); "
        "print(sorted(n for n in dbkeeper.__all__ if not hasattr(dbkeeper, n)))\n"
        "try:\n    dbkeeper.Nothing\nexcept AttributeError as exc:\n    print(exc)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        "False",
        "True",
        "[]",
        "module 'dbkeeper' has no attribute 'Nothing'",
    ]
