"""The job kinds. Each module holds one kind's options (a JobSpec subclass) and behaviour."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dbkeeper.tasks.health import HealthJob
from dbkeeper.tasks.optimize import OptimizeJob
from dbkeeper.tasks.purge import PurgeJob
from dbkeeper.tasks.python import PythonJob
from dbkeeper.tasks.vacuum import VacuumJob

AnyJob = Annotated[
    PurgeJob | VacuumJob | OptimizeJob | HealthJob | PythonJob,
    Field(discriminator="task"),
]
KINDS = ("purge", "vacuum", "optimize", "health", "python")


__all__ = ["KINDS", "AnyJob", "HealthJob", "OptimizeJob", "PurgeJob", "PythonJob", "VacuumJob"]
