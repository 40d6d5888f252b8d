"""Config and CLI: env expansion, every bad input named by file:line, job and key,
nothing changed on refusal, exit statuses and help."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import sqlite_data as db
from tests.conftest import Project

DATABASE = """
[databases.app]
url = "sqlite:///app.db"
"""

PURGE = """
[jobs.purge-logs]
task = "purge"
database = "app"
table = "logs"
column = "ts"
older_than = "${LOG_RETENTION_DAYS:-90}d"
schedule = "0 1 * * *"
"""


def _logs(project: Project) -> Path:
    now = datetime.now(UTC)
    rows = [(days, (now - timedelta(days=days, hours=1)).isoformat()) for days in (1, 8, 100)]
    return db.create(
        project.path / "app.db",
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, ts TEXT);",
        rows,
        "INSERT INTO logs VALUES (?, ?)",
    )


def test_env_default_and_override_set_the_retention(project: Project) -> None:
    path = _logs(project)
    project.write_config(DATABASE + PURGE)
    assert project.cli("preview", "purge-logs", "--json").json()["rows"] == 1  # 90d: id 100
    seven = project.env(LOG_RETENTION_DAYS="7")
    preview = project.cli("preview", "purge-logs", "--json", env=seven).json()
    assert preview["rows"] == 2
    cutoff = datetime.fromisoformat(preview["cutoff"])
    assert abs(cutoff - (datetime.now(UTC) - timedelta(days=7))) < timedelta(minutes=1)
    assert project.cli("run", "purge-logs", env=seven).returncode == 0
    assert db.ids(path, "logs") == [1]


def test_dollar_dollar_is_a_literal_dollar(project: Project) -> None:
    _logs(project)
    project.write_config(DATABASE + PURGE + 'description = "costs $$5 of ${UNSET_VAR:-disk}"\n')
    jobs = project.cli("jobs", "--json").json()
    assert jobs[0]["description"] == "costs $5 of disk"


BAD_INPUTS = [
    # (config text, the line the message must point at, words it must contain)
    (
        PURGE.replace("${LOG_RETENTION_DAYS:-90}d", "${NOT_SET_ANYWHERE}d"),
        7,
        "job 'purge-logs', key 'older_than': environment variable NOT_SET_ANYWHERE is not set",
    ),
    (PURGE + "batch_size = 10\n", 9, "job 'purge-logs', key 'batch_size': unknown key"),
    (
        PURGE.replace('"${LOG_RETENTION_DAYS:-90}d"', "true"),
        7,
        "job 'purge-logs', key 'older_than'",
    ),
    (
        PURGE.replace('"${LOG_RETENTION_DAYS:-90}d"', '"3 weeks"'),
        7,
        "job 'purge-logs', key 'older_than': '3 weeks' is not a duration",
    ),
    (
        PURGE.replace('database = "app"', 'database = "ap"'),
        4,
        "job 'purge-logs', key 'database': unknown database 'ap' (databases: app)",
    ),
    (PURGE.replace("0 1 * * *", "0 0 31 2 *"), 8, "job 'purge-logs', key 'schedule'"),
    (PURGE.replace("0 1 * * *", "every fortnight"), 8, "job 'purge-logs', key 'schedule'"),
    (
        PURGE + 'timezone = "Europe/Atlantis"\n',
        9,
        "job 'purge-logs', key 'timezone': unknown time zone 'Europe/Atlantis'",
    ),
    (PURGE.replace('task = "purge"', 'task = "prune"'), 3, "job 'purge-logs', key 'task'"),
    (PURGE.replace('column = "ts"\n', ""), 2, "job 'purge-logs', key 'column'"),
    ("[keeper]\nworkers = 0\n" + PURGE, 2, "keeper.workers"),
    ('[keeper]\nhistory_retention = "forever"\n' + PURGE, 2, "keeper.history_retention"),
    ("[keeper]\nworker = 2\n" + PURGE, 2, "keeper.worker: unknown key"),
]


@pytest.mark.parametrize(("jobs", "line", "words"), BAD_INPUTS)
def test_bad_config_is_refused_naming_file_line_job_and_key(
    project: Project, jobs: str, line: int, words: str
) -> None:
    path = _logs(project)
    before = db.digest(path)
    # Line numbers below count from the start of the jobs text: databases go last.
    project.write_config(jobs + DATABASE)
    for command in (("check",), ("run", "--all"), ("tick",), ("preview", "purge-logs")):
        result = project.cli(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert f"dbkeeper.toml:{line}: " in result.stderr, result.stderr
        assert words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert db.digest(path) == before
    assert not project.state.exists(), "a refused config creates no state store"


def test_check_lists_every_problem_at_once_in_line_order(project: Project) -> None:
    _logs(project)
    project.write_config(
        DATABASE
        + """
[jobs.a]
task = "purge"
database = "nope"
table = "logs"
column = "ts"
older_than = "30d"
schedule = "61 * * * *"
colour = "red"

[jobs.b]
task = "vacuum"
database = "app"
timezone = "Mars/Base"
"""
    )
    result = project.cli("check")
    assert result.returncode == 1
    lines = [line.removeprefix("error: ") for line in result.stderr.strip().splitlines()]
    assert lines == [
        "dbkeeper.toml:7: job 'a', key 'database': unknown database 'nope' (databases: app)",
        lines[1],
        "dbkeeper.toml:12: job 'a', key 'colour': unknown key",
        "dbkeeper.toml:17: job 'b', key 'timezone': unknown time zone 'Mars/Base' "
        "(use an IANA name like Europe/Berlin)",
    ]
    assert lines[1].startswith("dbkeeper.toml:11: job 'a', key 'schedule': ")


def test_missing_tables_and_columns_are_found_in_the_real_catalogue(project: Project) -> None:
    path = _logs(project)
    before = db.digest(path)
    project.write_config(DATABASE + PURGE.replace('table = "logs"', 'table = "log"'))
    result = project.cli("check")
    assert result.returncode == 1
    assert "job 'purge-logs'" in result.stderr
    assert "database 'app' has no table 'log' (tables: logs)" in result.stderr
    project.write_config(DATABASE + PURGE.replace('column = "ts"', 'column = "created"'))
    result = project.cli("check")
    assert result.returncode == 1
    assert "has no column 'created' (columns: id, ts)" in result.stderr
    assert db.digest(path) == before


def test_toml_syntax_errors_name_the_line(project: Project) -> None:
    project.write_config("[jobs.x\ntask = 1\n")
    result = project.cli("check")
    assert result.returncode == 1
    assert "dbkeeper.toml:" in result.stderr and "line 1" in result.stderr


def test_missing_config_file_is_explained(project: Project) -> None:
    result = project.cli("jobs")
    assert result.returncode == 1
    assert "dbkeeper.toml: no such config file (create one with `dbkeeper init`)" in (result.stderr)


def test_init_writes_a_starter_that_check_accepts_and_never_overwrites(project: Project) -> None:
    assert project.cli("init").returncode == 0
    text = project.config.read_text()
    assert "[jobs." in text
    # The starter's jobs point at app.db's logs table; check finds it missing, then accepts.
    missing = project.cli("check")
    assert missing.returncode == 1 and "app.db does not exist" in missing.stderr
    db.create(project.path / "app.db", "CREATE TABLE logs (id INTEGER PRIMARY KEY, created_at);")
    checked = project.cli("check")
    assert checked.returncode == 0, checked.stderr
    again = project.cli("init")
    assert again.returncode == 1
    assert "exists" in again.stderr
    assert project.config.read_text() == text


def test_config_option_before_or_after_the_command_and_from_the_environment(
    project: Project,
) -> None:
    _logs(project)
    elsewhere = project.path / "conf"
    elsewhere.mkdir()
    (elsewhere / "keeper.toml").write_text(DATABASE.replace("app.db", "../app.db") + PURGE)
    for args in (
        ("-c", "conf/keeper.toml", "jobs", "--json"),
        ("jobs", "--json", "-c", "conf/keeper.toml"),
        ("jobs", "--json", "--config", "conf/keeper.toml"),
    ):
        result = project.cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert [job["name"] for job in result.json()] == ["purge-logs"]
    env = project.env(DBKEEPER_CONFIG=str(elsewhere / "keeper.toml"))
    assert project.cli("jobs", "--json", env=env).json()[0]["name"] == "purge-logs"


COMMANDS = [
    "init",
    "check",
    "jobs",
    "next",
    "preview",
    "run",
    "tick",
    "start",
    "status",
    "history",
    "health",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_in_its_help(project: Project, command: str) -> None:
    result = project.cli(command, "--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout
    assert "dbkeeper " + command in result.stdout


@pytest.mark.parametrize(
    "args", [("frobnicate",), ("run",), ("history", "--limit", "zero"), ("jobs", "--colour")]
)
def test_usage_errors_exit_2(project: Project, args: tuple[str, ...]) -> None:
    _logs(project)
    project.write_config(DATABASE + PURGE)
    result = project.cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_job_exits_1_and_debug_shows_a_traceback_only_when_asked(
    project: Project,
) -> None:
    _logs(project)
    project.write_config(DATABASE + PURGE)
    result = project.cli("run", "purge-lgs")
    assert result.returncode == 1
    assert "purge-lgs" in result.stderr and "purge-logs" in result.stderr
    assert "Traceback" not in result.stderr


def test_history_json_has_the_documented_fields(project: Project) -> None:
    _logs(project)
    project.write_config(DATABASE + PURGE)
    assert project.cli("run", "purge-logs").returncode == 0
    (run,) = project.cli("history", "--json").json()
    assert {
        "job",
        "status",
        "scheduled_for",
        "started_at",
        "finished_at",
        "rows_affected",
        "error",
    } <= set(run)
    assert (run["job"], run["status"], run["rows_affected"], run["error"]) == (
        "purge-logs",
        "succeeded",
        1,
        None,
    )
    shown = project.cli("history")
    assert "purge-logs" in shown.stdout and "succeeded" in shown.stdout
