"""dbkeeper: declarative, exactly-once maintenance for SQLite and PostgreSQL databases.

The names below are imported when first used, so that the ``dbkeeper`` command can
import its modules its own way (see ``dbkeeper.__main__``).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from dbkeeper.version import __version__

if TYPE_CHECKING:
    from dbkeeper.context import Outcome, RunContext
    from dbkeeper.errors import ConfigError, DbkeeperError
    from dbkeeper.keeper import Keeper
    from dbkeeper.models import Run, RunStatus

_HOMES = {
    "ConfigError": "dbkeeper.errors",
    "DbkeeperError": "dbkeeper.errors",
    "Keeper": "dbkeeper.keeper",
    "Outcome": "dbkeeper.context",
    "Run": "dbkeeper.models",
    "RunContext": "dbkeeper.context",
    "RunStatus": "dbkeeper.models",
}

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


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dbkeeper' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
