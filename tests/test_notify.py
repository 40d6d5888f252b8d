"""Alerts delivered for real, through Apprise's json:// to a local HTTP receiver."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests import sqlite_data as db
from tests.conftest import Project, Receiver

History = Callable[..., list[dict[str, Any]]]


FLAKY = """
from pathlib import Path

def fetch(ctx):
    if not Path(__file__).with_name("fixed").exists():
        raise RuntimeError("upstream API answered 503")
    return 1
"""


def test_failure_alerts_once_and_recovery_once(
    project: Project, receiver: Receiver, history: History
) -> None:
    (project.path / "flaky.py").write_text(FLAKY)
    project.write_config(
        f"""
        [notify.ops]
        url = "{receiver.url}"
        on = ["failure", "recovery"]

        [jobs.fetch]
        task = "python"
        call = "flaky:fetch"
        notify = ["ops"]
        retries = 1
        retry_backoff = "100ms"
        """
    )
    assert project.cli("run", "fetch").returncode == 1
    # Two attempts failed; one alert, about the last.
    assert len(receiver.received) == 1
    alert = receiver.received[0]
    assert alert["type"] == "failure" and alert["title"] == "dbkeeper: fetch failed"
    assert "upstream API answered 503" in alert["message"]
    assert "after 2 attempt(s)" in alert["message"]

    (project.path / "fixed").touch()
    assert project.cli("run", "fetch").returncode == 0
    assert project.cli("run", "fetch").returncode == 0
    assert [m["type"] for m in receiver.received] == ["failure", "success"]
    assert receiver.received[1]["title"] == "dbkeeper: fetch recovered"


def test_unknown_notifier_is_a_config_error(project: Project) -> None:
    project.write_config(
        """
        [jobs.fetch]
        task = "python"
        call = "flaky:fetch"
        notify = ["opz"]
        """
    )
    result = project.cli("check")
    assert result.returncode == 1
    assert "dbkeeper.toml:5: job 'fetch', key 'notify': unknown notifier 'opz'" in result.stderr


def test_purge_warns_once_per_slot_grouped_by_owner(
    project: Project, receiver: Receiver, history: History
) -> None:
    now = datetime.now(UTC)
    rows = [
        (1, 7, now - timedelta(days=10)),
        (2, 7, now - timedelta(days=10, hours=1)),
        (3, 7, now - timedelta(days=6)),
        (4, 8, now - timedelta(days=9)),
        (5, 8, now - timedelta(days=8)),
        (6, 9, now - timedelta(hours=1)),  # not old enough now, but by the slot
    ]
    db.create(
        project.path / "app.db",
        "CREATE TABLE uploads (id INTEGER PRIMARY KEY, user_id INTEGER, created TEXT)",
        [(i, user, moment.isoformat()) for i, user, moment in rows],
        "INSERT INTO uploads VALUES (?, ?, ?)",
    )
    project.write_config(
        f"""
        [databases.app]
        url = "sqlite:///app.db"

        [notify.owners]
        url = "{receiver.url}"
        on = ["warning"]

        [jobs.expire-uploads]
        task = "purge"
        database = "app"
        table = "uploads"
        column = "created"
        older_than = "5d"
        schedule = "0 0 1 1 *"
        warn_before = "400d"
        owner_column = "user_id"
        notify = ["owners"]
        """
    )
    preview = project.cli("preview", "expire-uploads", "--json").json()
    assert [(o["owner"], o["rows"]) for o in preview["owners"]] == [(7, 3), (8, 2)]

    for _ in range(3):
        assert project.cli("tick").returncode == 0
    warnings = receiver.of_type("warning")
    assert len(warnings) == 1, warnings
    # The slot (next 1 January) is weeks away: by then every row is older than 5 days.
    body = warnings[0]["message"].splitlines()
    assert "will delete 6 rows at " in warnings[0]["title"]
    assert body[1:] == [
        f"owner 7: 3 rows, oldest {rows[1][2]:%Y-%m-%d %H:%M} UTC",
        f"owner 8: 2 rows, oldest {rows[3][2]:%Y-%m-%d %H:%M} UTC",
        f"owner 9: 1 rows, oldest {rows[5][2]:%Y-%m-%d %H:%M} UTC",
    ]
    # Nothing was deleted: the slot is still ahead.
    assert db.ids(project.path / "app.db", "uploads") == [1, 2, 3, 4, 5, 6]
    assert history() == []


def test_postgres_preview_groups_rows_per_owner(project: Project, pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE uploads (id int PRIMARY KEY, user_id int, created timestamptz)")
        conn.execute(
            "INSERT INTO uploads VALUES (1, 7, now() - interval '10 days'), "
            "(2, 7, now() - interval '9 days'), (3, 8, now() - interval '8 days'), "
            "(4, 9, now() - interval '1 day')"
        )
        oldest = conn.execute("SELECT min(created) FROM uploads").fetchone()
    project.write_config(
        f"""
        [databases.app]
        url = "{pg_url}"

        [jobs.expire-uploads]
        task = "purge"
        database = "app"
        table = "uploads"
        column = "created"
        older_than = "5d"
        owner_column = "user_id"
        """
    )
    preview = project.cli("preview", "expire-uploads", "--json").json()
    owners = [(o["owner"], o["rows"]) for o in preview["owners"]]
    assert owners == [(7, 2), (8, 1)]
    assert oldest is not None
    assert preview["owners"][0]["oldest"] == oldest[0].astimezone(UTC).isoformat()
