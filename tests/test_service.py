"""Daily log files with retention and JSON lines; systemd units from install-systemd."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime

from tests.conftest import Project

NOOP = "def noop(ctx):\n    return 3\n"


def test_logs_go_to_daily_files_pruned_after_the_retention(project: Project) -> None:
    (project.path / "tasks.py").write_text(NOOP)
    logs = project.path / "logs"
    logs.mkdir()
    (logs / "dbkeeper-20200101.log").write_text("old\n")
    (logs / "notes.txt").write_text("not a log of ours\n")
    project.write_config(
        """
        [keeper]
        log_dir = "logs"
        log_retention = "7d"

        [jobs.noop]
        task = "python"
        call = "tasks:noop"
        """
    )
    assert project.cli("run", "noop").returncode == 0
    today = logs / f"dbkeeper-{datetime.now(UTC):%Y%m%d}.log"
    assert "run 1 of noop succeeded" in today.read_text()
    assert sorted(p.name for p in logs.iterdir()) == [today.name, "notes.txt"]

    assert project.cli("--log-format", "json", "run", "noop").returncode == 0
    entry = json.loads(today.read_text().splitlines()[-1])
    assert entry["level"] == "info" and entry["logger"] == "dbkeeper.runner"
    assert entry["message"] == "run 2 of noop succeeded"


def test_install_systemd_writes_units_for_this_config(project: Project) -> None:
    (project.path / "tasks.py").write_text(NOOP)
    project.write_config(
        """
        [jobs.noop]
        task = "python"
        call = "tasks:noop"
        """
    )
    units = project.path / "units"
    result = project.cli(
        "install-systemd", "--user", "app", "--env-file", "/etc/app/env", "--output", str(units)
    )
    assert result.returncode == 0, result.stderr
    assert "sudo systemctl enable --now dbkeeper.service" in result.stdout
    service = (units / "dbkeeper.service").read_text()
    assert f"--config {project.config} start" in service
    assert "User=app" in service and "EnvironmentFile=-/etc/app/env" in service
    assert "Restart=on-failure" in service

    again = project.cli("install-systemd", "--output", str(units))
    assert again.returncode == 1 and "exists (use --force to replace it)" in again.stderr

    timer = project.cli(
        "install-systemd",
        "--mode",
        "timer",
        "--on-calendar",
        "*:0/5",
        "--output",
        str(units),
        "--force",
    )
    assert timer.returncode == 0
    assert "OnCalendar=*:0/5" in (units / "dbkeeper.timer").read_text()
    assert f"--config {project.config} tick" in (units / "dbkeeper.service").read_text()
    if shutil.which("systemd-analyze"):  # systemd's own checker, where the machine has it
        files = [str(units / "dbkeeper.timer"), str(units / "dbkeeper.service")]
        verified = subprocess.run(
            ["systemd-analyze", "verify", *files], capture_output=True, text=True, check=False
        )
        assert verified.returncode == 0, verified.stderr
