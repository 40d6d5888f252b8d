"""The HTTP API of a real `dbkeeper start` on a loopback port: every route, tokens,
bad input, runs queued over HTTP, Prometheus metrics, and a schema-driven fuzz for 5xx."""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families

from tests import sqlite_data as db
from tests.conftest import Project

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CONFIG = """
[keeper]
heartbeat = "1s"

[keeper.http]
listen = "127.0.0.1:{port}"
token = "${{API_TOKEN}}"

[databases.app]
url = "sqlite:///app.db"

[jobs.purge-logs]
task = "purge"
database = "app"
table = "logs"
column = "at"
older_than = "1d"
schedule = "0 3 * * *"

[jobs.broken]
task = "sql"
database = "app"
sql = "UPDATE logs SET at = at"

[jobs.health]
task = "health"
database = "app"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    project: Project
    url: str
    process: subprocess.Popen[str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.put(self.url + path, timeout=30, **kwargs)

    def history(self, *args: str) -> list[dict[str, Any]]:
        """`dbkeeper history --json` of this service's project (its config needs the token)."""
        env = self.project.env(API_TOKEN=TOKEN)
        result = self.project.cli("history", "--json", "-n", "1000", *args, env=env)
        assert result.returncode == 0, result.stderr
        runs: list[dict[str, Any]] = result.json()
        return runs

    def wait_for(self, run_id: int, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run: dict[str, Any] = self.get(f"/api/runs/{run_id}").json()
            if run["status"] not in ("queued", "running"):
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not finish")


def start_service(folder: Path) -> Iterator[Service]:
    project = Project(folder)
    now = datetime.now(UTC)
    db.create(
        folder / "app.db",
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, at TEXT)",
        [(i, (now - timedelta(hours=i)).isoformat()) for i in range(1, 49)],
        "INSERT INTO logs VALUES (?, ?)",
    )
    port = free_port()
    project.write_config(CONFIG.format(port=port))
    process = project.popen("start", env=project.env(API_TOKEN=TOKEN))
    service = Service(project, f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 30
    while True:
        try:
            if service.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the API did not come up"
        time.sleep(0.1)
    try:
        yield service
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from start_service(tmp_path_factory.mktemp("api"))


def test_read_routes_answer_json(service: Service) -> None:
    jobs = service.get("/api/jobs").json()
    assert [job["name"] for job in jobs] == ["purge-logs", "broken", "health"]
    assert jobs[0]["schedule_words"] == "At 03:00 every day" and jobs[0]["next_run"]
    one = service.get("/api/jobs/purge-logs").json()
    assert one["settings"]["older_than"] == "P1D" and one["health"] == "healthy"
    preview = service.get("/api/jobs/purge-logs/preview").json()
    assert preview["rows"] == 25  # 24 h and older: rows 24..48, 25 of them, counted
    status = service.get("/api/status").json()
    assert len(status["jobs"]) == 3 and status["nodes"][0]["alive"]
    assert service.get("/healthz").json() == {
        "status": "ok",
        "scheduler": True,
        "state_store": True,
    }
    spec = service.get("/openapi.json").json()
    assert "/api/jobs/{name}/run" in spec["paths"]
    assert service.get("/").text.startswith("<!doctype html>")


def test_posts_need_the_token_in_constant_time_comparison(service: Service) -> None:
    assert service.post("/api/jobs/purge-logs/run").status_code == 401
    wrong = service.post("/api/jobs/purge-logs/run", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "missing or wrong bearer token"}
    basic = service.post("/api/jobs/purge-logs/run", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    # Reads on loopback need no token.
    assert service.get("/api/jobs").status_code == 200


def test_bad_input_is_404_or_422_with_a_message(service: Service) -> None:
    missing = service.get("/api/jobs/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no job named 'nope' (jobs: broken, health, purge-logs)"
    assert service.post("/api/jobs/nope/run", headers=AUTH).status_code == 404
    assert service.get("/api/runs?job=nope").status_code == 404
    bad = service.get("/api/runs?status=exploded")
    assert bad.status_code == 422 and bad.json()["error"].startswith("query.status:")
    assert service.get("/api/runs?limit=0").status_code == 422
    assert service.get("/api/runs?limit=ten").status_code == 422
    assert service.get("/api/runs/0").status_code == 422
    assert service.get("/api/runs/999999").status_code == 404


def test_a_run_posted_over_http_runs_and_is_in_the_history(service: Service) -> None:
    answer = service.post("/api/jobs/purge-logs/run", headers=AUTH)
    assert answer.status_code == 202
    run_id = answer.json()["run_id"]
    run = service.wait_for(run_id)
    assert run["status"] == "succeeded" and run["trigger"] == "manual"
    assert run["rows_affected"] == 25
    listed = service.get("/api/runs", params={"job": "purge-logs", "limit": 5}).json()
    assert listed[0]["id"] == run_id
    assert service.history("purge-logs")[0]["id"] == run_id
    assert db.ids(service.project.path / "app.db", "logs") == list(range(1, 24))


def test_metrics_parse_and_match_the_history(service: Service) -> None:
    ids = [
        service.post(f"/api/jobs/{job}/run", headers=AUTH).json()["run_id"]
        for job in ("health", "broken")
    ]
    for run_id in ids:
        service.wait_for(run_id)
    families = {f.name: f for f in text_string_to_metric_families(service.get("/metrics").text)}
    history = service.history()
    counted: dict[tuple[str, str], int] = {}
    for run in history:
        counted[(run["job"], run["status"])] = counted.get((run["job"], run["status"]), 0) + 1
    runs = {
        (sample.labels["job"], sample.labels["status"]): sample.value
        for sample in families["dbkeeper_runs"].samples
    }
    assert runs == counted
    rows = {s.labels["job"]: s.value for s in families["dbkeeper_rows_affected"].samples}
    assert rows["purge-logs"] == sum(
        run["rows_affected"] or 0 for run in history if run["job"] == "purge-logs"
    )
    health = {
        (s.labels["job"], s.labels["health"]): s.value
        for s in families["dbkeeper_job_health"].samples
    }
    assert health[("health", "healthy")] == 1
    size = families["dbkeeper_database_size_bytes"].samples[0]
    assert size.labels == {"database": "app"}
    assert size.value == (service.project.path / "app.db").stat().st_size
    durations = families["dbkeeper_run_duration_seconds"]
    count = [s for s in durations.samples if s.name.endswith("_count")]
    assert sum(s.value for s in count) == sum(1 for run in history if run["finished_at"])
    assert families["dbkeeper_scheduler_up"].samples[0].value == 1
    last = {
        s.labels["job"]: s.value
        for s in families["dbkeeper_last_success_timestamp_seconds"].samples
    }
    assert "health" in last


def test_a_run_posted_with_downstream_starts_its_chain_once(service: Service) -> None:
    after_health = {"task": "vacuum", "database": "app", "after": ["health"]}
    created = service.put("/api/jobs/after-health", json=after_health, headers=AUTH)
    assert created.status_code == 201, created.text
    try:
        plain = service.post("/api/jobs/health/run", headers=AUTH).json()["run_id"]
        assert service.wait_for(plain)["status"] == "succeeded"
        chained = service.post("/api/jobs/health/run?with_downstream=true", headers=AUTH).json()
        assert service.wait_for(chained["run_id"])["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while not (started := service.get("/api/runs?job=after-health").json()):
            assert time.monotonic() < deadline, "the chain did not start"
            time.sleep(0.2)
        (run,) = started
        assert run["upstream_run"] == chained["run_id"] and run["trigger"] == "upstream"
        assert service.wait_for(run["id"])["status"] == "succeeded"
    finally:
        removed = httpx.delete(service.url + "/api/jobs/after-health", headers=AUTH, timeout=30)
        assert removed.status_code == 200, removed.text
    assert len(service.get("/api/runs?job=after-health").json()) == 1, "history kept"


def test_listening_beyond_loopback_needs_a_token(project: Project) -> None:
    project.write_config(
        """
        [keeper.http]
        listen = "0.0.0.0:18099"
        """
    )
    result = project.cli("start", timeout=30)
    assert result.returncode == 1
    assert "[keeper.http] listen = '0.0.0.0:18099' is beyond loopback: set [keeper.http] token" in (
        result.stderr
    )


def test_beyond_loopback_every_request_needs_the_token(project: Project) -> None:
    port = free_port()
    project.write_config(
        textwrap.dedent(
            f"""
            [keeper.http]
            listen = "0.0.0.0:{port}"
            token = "{TOKEN}"
            """
        )
    )
    process = project.popen("start")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(url + "/api/jobs", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert answer.status_code == 401
        assert httpx.get(url + "/api/jobs", headers=AUTH, timeout=5).json() == []
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_no_input_makes_the_server_fail(service: Service) -> None:
    """schemathesis generates requests for every operation of the OpenAPI document."""
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def no_5xx(case: Any) -> None:
            response = case.call(base_url=service.url, headers=AUTH)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)

        no_5xx()
