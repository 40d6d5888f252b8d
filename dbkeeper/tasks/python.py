"""``python``: call ``module:function(ctx, **args)``; also jobs from ``@keeper.job``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr

from dbkeeper.context import Outcome, RunContext
from dbkeeper.errors import TargetError
from dbkeeper.jobspec import JobSpec

JobFunction = Callable[..., Any]


CallPath = Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")]


def load_callable(path: str) -> JobFunction:
    """``module:function`` (``module.sub:Class.method`` too), imported now."""
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise TargetError(f"cannot load {path!r}: {exc}") from None
    if not callable(found):
        raise TargetError(f"{path!r} is not callable")
    return found  # type: ignore[no-any-return]


class PythonJob(JobSpec):
    task: Literal["python"]
    call: CallPath
    args: dict[str, Any] = Field(default_factory=dict)
    _function: JobFunction | None = PrivateAttr(default=None)

    @classmethod
    def for_function(cls, name: str, function: JobFunction, **options: Any) -> PythonJob:
        spec = cls(
            name=name,
            task="python",
            call=f"{function.__module__}:{function.__qualname__}",
            **options,
        )
        spec._function = function
        return spec

    def function(self) -> JobFunction:
        """The callable, loaded once (its module is imported only once anyway)."""
        function = self._function  # a private attribute costs a lookup in pydantic
        if function is None:
            function = self._function = load_callable(self.call)
        return function

    def check(self, ctx: RunContext) -> None:
        self.function()

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        self.function()
        return {"call": self.call, "args": self.args}

    def run(self, ctx: RunContext) -> Outcome:
        value = self.function()(ctx, **self.args)
        ctx.check_cancelled()
        if isinstance(value, Outcome):
            return value
        if isinstance(value, dict):
            return Outcome(value.get("rows_affected"), value)
        if isinstance(value, int) and not isinstance(value, bool):
            return Outcome(value, {})
        return Outcome(ctx.rows, {} if value is None else {"value": repr(value)})
