"""The dbkeeper side of the purge benchmarks: one timed purge of ``events``."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from dbkeeper import Keeper
from dbkeeper.models import Run


def timed_purge(url: str, column: str, retention_days: int) -> tuple[float, Run]:
    """Purge rows of ``events`` older than the retention; seconds taken and the run."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "dbkeeper.toml"
        config.write_text(
            f"""
[databases.app]
url = "{url}"

[jobs.purge]
task = "purge"
database = "app"
table = "events"
column = "{column}"
older_than = "{retention_days}d"
"""
        )
        keeper = Keeper.from_config(config)
        try:
            keeper.get("purge")  # the state store is created and the jobs loaded before the clock
            started = time.perf_counter()
            run = keeper.run("purge")
            elapsed = time.perf_counter() - started
        finally:
            keeper.close()
    assert run.status.value == "succeeded", run.error
    return elapsed, run
