"""The job kinds. Each module holds one kind's options (a JobSpec subclass) and behaviour."""

from __future__ import annotations

from typing import Annotated, get_args

from pydantic import Field

from dbkeeper.tasks.backfill import BackfillJob
from dbkeeper.tasks.backup import BackupJob
from dbkeeper.tasks.command import CommandJob
from dbkeeper.tasks.export import ExportJob
from dbkeeper.tasks.files import FilesJob
from dbkeeper.tasks.health import HealthJob
from dbkeeper.tasks.optimize import OptimizeJob
from dbkeeper.tasks.purge import PurgeJob
from dbkeeper.tasks.python import PythonJob
from dbkeeper.tasks.sql import SqlJob
from dbkeeper.tasks.vacuum import VacuumJob

AnyJob = Annotated[
    PurgeJob
    | VacuumJob
    | OptimizeJob
    | HealthJob
    | SqlJob
    | BackfillJob
    | BackupJob
    | ExportJob
    | CommandJob
    | FilesJob
    | PythonJob,
    Field(discriminator="task"),
]
KINDS = tuple(
    get_args(kind.model_fields["task"].annotation)[0] for kind in get_args(get_args(AnyJob)[0])
)


__all__ = ["KINDS", "AnyJob"]
