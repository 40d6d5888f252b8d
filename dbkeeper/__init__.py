"""dbkeeper: declarative, exactly-once maintenance for SQLite and PostgreSQL databases."""

from dbkeeper.context import Outcome, RunContext
from dbkeeper.errors import ConfigError, DbkeeperError
from dbkeeper.keeper import Keeper
from dbkeeper.models import Run, RunStatus
from dbkeeper.version import __version__

__all__ = [
    "ConfigError",
    "DbkeeperError",
    "Keeper",
    "Outcome",
    "Run",
    "RunContext",
    "RunStatus",
    "__version__",
]
