"""The options every job has, whatever its task, and the value types config uses."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)

from dbkeeper.units import parse_duration, parse_size

if TYPE_CHECKING:
    from dbkeeper.context import Outcome, RunContext


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s or 2h")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return value


def _size(value: object) -> object:
    if isinstance(value, str):
        return parse_size(value)
    return value


def _beside_config(value: str, info: ValidationInfo) -> str:
    """A relative path is relative to the config file's folder (else the working folder)."""
    base = (info.context or {}).get("base") or Path.cwd()
    return str((Path(base) / value).resolve()) if value else value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
# A file or folder path from config, made absolute.
ConfigPath = Annotated[str, Field(min_length=1), AfterValidator(_beside_config)]
Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]
Identifier = Annotated[str, Field(min_length=1, max_length=128)]


class Strict(BaseModel):
    """A config section: immutable, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class JobSpec(Strict):
    """Options shared by every job. Task modules subclass this with their own keys."""

    name: str = Field(exclude=True)
    task: str
    database: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    description: str = ""
    enabled: bool = True
    timeout: Duration | None = None
    retries: int = Field(0, ge=0, le=100)
    retry_backoff: Duration = timedelta(seconds=30)
    concurrency: Literal["skip", "queue"] = "skip"
    misfire_grace: Duration = timedelta(hours=1)
    notify: list[str] = Field(default_factory=list)
    after: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    after_any: bool = False
    after_failure: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @property
    def destructive(self) -> bool:
        """Whether the job deletes or rewrites data (then it is previewable and guarded)."""
        return False

    @property
    def tables_written(self) -> tuple[str, ...]:
        """Tables this job deletes from or rewrites: no two runs work on one at once."""
        return ()

    def check(self, ctx: RunContext) -> None:
        """Check the job against the real database, changing nothing."""
        raise NotImplementedError

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        """What a run would do now, changing nothing."""
        raise NotImplementedError

    def run(self, ctx: RunContext) -> Outcome:
        """Do the work; raise DbkeeperError (or Cancelled) when it cannot be done."""
        raise NotImplementedError
