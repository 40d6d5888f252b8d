"""Every error dbkeeper raises on purpose derives from DbkeeperError.

The command line prints the message of a DbkeeperError and exits with status 1;
anything else is a bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

from typing import Any


class DbkeeperError(Exception):
    """dbkeeper could not do what was asked."""

    def __init__(self, message: str | None = None, result: dict[str, Any] | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        # What a failed run did before it failed, recorded with the run.
        self.result: dict[str, Any] = result or {}


class ConfigError(DbkeeperError):
    """The configuration is invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ScheduleError(DbkeeperError):
    """The schedule cannot be understood."""


class TargetError(DbkeeperError):
    """A table, column or database named by a job does not fit the real database."""


class UnknownJob(DbkeeperError):
    """No job has that name."""


class RefusedError(DbkeeperError):
    """A safety guard refused the operation."""


class Cancelled(DbkeeperError):
    """The run was cancelled before it finished."""

    def __init__(self, reason: str, result: dict[str, Any] | None = None) -> None:
        self.reason = reason
        super().__init__(f"cancelled: {reason}", result)
