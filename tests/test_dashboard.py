"""The dashboard in headless Chromium against a real `dbkeeper start`: jobs listed,
"run now" creates a run, the size chart renders; a screenshot is kept."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.test_api import AUTH, TOKEN, Service, start_service

# Without these, Chromium keeps trying to reach Google's services from a closed network.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    # Debian's Chromium where installed; else the one `playwright install chromium` fetched.
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    yield from start_service(tmp_path)


def test_dashboard_lists_jobs_runs_a_job_and_draws_the_size_chart(
    service: Service, browser: Browser, tmp_path: Path
) -> None:
    for _ in range(2):  # two health reports: a size history and a growth trend
        run_id = service.post("/api/jobs/health/run", headers=AUTH).json()["run_id"]
        service.wait_for(run_id)
    then = {"task": "vacuum", "database": "app", "after": ["purge-logs"]}
    assert service.put("/api/jobs/compact", json=then, headers=AUTH).status_code == 201
    page = browser.new_page()
    page.goto(service.url + "/")
    page.wait_for_selector("body[data-loaded=yes]")
    names = page.locator("#jobs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.job)")
    assert names == ["purge-logs", "broken", "health", "compact"]
    health_badge = page.locator("#jobs tbody tr[data-job=health] .badge").first
    assert health_badge.inner_text() == "healthy"
    purge_row = page.locator("#jobs tbody tr[data-job=purge-logs]")
    assert "then compact" in purge_row.inner_text()
    assert (
        "after purge-logs succeeds" in page.locator("#jobs tbody tr[data-job=compact]").inner_text()
    )

    chart = page.locator("svg[data-database=app]")
    chart.wait_for()
    assert chart.locator("circle").count() == 2
    assert chart.locator("path.size-line").get_attribute("d", timeout=1000)

    before = {run["id"] for run in service.get("/api/runs").json()}
    page.fill("#token", TOKEN)
    page.locator("#jobs tbody tr[data-job=purge-logs] button", has_text="run now").click()
    page.wait_for_selector("#detail-title:has-text('run ')")
    deadline = time.monotonic() + 30
    while True:
        new = [r for r in service.get("/api/runs").json() if r["id"] not in before]
        if new and new[0]["status"] == "succeeded":
            break
        assert time.monotonic() < deadline, new
        time.sleep(0.2)
    assert new[0]["job"] == "purge-logs" and new[0]["trigger"] == "manual"
    page.reload()
    page.wait_for_selector("body[data-loaded=yes]")
    page.wait_for_selector(f"#runs tbody tr:has-text('purge-logs') >> text={new[0]['id']}")

    page.locator("#jobs tbody tr[data-job=health] button", has_text="pause").click()
    page.wait_for_selector("#jobs tbody tr[data-job=health] .badge.paused")
    paused = service.get("/api/jobs/health").json()
    assert paused["paused"]["by"] == "dashboard (api from 127.0.0.1)"
    assert [change["action"] for change in paused["changes"]] == ["paused"]
    page.locator("#jobs tbody tr[data-job=health] button", has_text="resume").click()
    page.wait_for_selector("#jobs tbody tr[data-job=health] .badge.healthy")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
