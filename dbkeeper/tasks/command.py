"""``command``: run a program (no shell unless ``shell = true``) in its own process group,
so a timeout or a shutdown stops it and everything it started."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
from typing import IO, Any, Literal

from pydantic import Field, model_validator

from dbkeeper.context import Outcome, RunContext
from dbkeeper.errors import Cancelled, DbkeeperError, TargetError
from dbkeeper.jobspec import ConfigPath, JobSpec

TAIL_BYTES = 4096
# After SIGTERM to the group, how long before SIGKILL.
KILL_GRACE = 3.0


class CommandJob(JobSpec):
    task: Literal["command"]
    command: str | list[str]
    shell: bool = False
    cwd: ConfigPath | None = None
    env: dict[str, str] = Field(default_factory=dict)
    ok_codes: list[int] = Field(default_factory=lambda: [0])

    @model_validator(mode="after")
    def _command_form(self) -> CommandJob:
        if self.shell and not isinstance(self.command, str):
            raise ValueError("with shell = true, 'command' is one string")
        if not self.argv():
            raise ValueError("'command' is empty")
        return self

    def argv(self) -> list[str]:
        if self.shell:
            return ["/bin/sh", "-c", str(self.command)]
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    def check(self, ctx: RunContext) -> None:
        if self.cwd is not None and not os.path.isdir(self.cwd):
            raise TargetError(f"cwd {self.cwd} is not a folder")

    def preview(self, ctx: RunContext) -> dict[str, Any]:
        self.check(ctx)
        return {"argv": self.argv(), "cwd": self.cwd, "env": sorted(self.env)}

    def run(self, ctx: RunContext) -> Outcome:
        self.check(ctx)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            began = time.monotonic()
            try:
                process = subprocess.Popen(
                    self.argv(),
                    cwd=self.cwd,
                    env={**os.environ, **self.env},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own process group, killed as one
                )
            except OSError as exc:
                raise TargetError(f"cannot start {self.argv()[0]!r}: {exc.strerror}") from None
            with ctx.token.interrupting(lambda: _stop_group(process)):
                code = process.wait()
            _stop_group(process)  # children it left behind
            stderr_tail = _tail(err)
            result: dict[str, Any] = {
                "argv": self.argv(),
                "exit_code": code,
                "seconds": round(time.monotonic() - began, 3),
                "stdout_tail": _tail(out),
                "stderr_tail": stderr_tail,
            }
        if ctx.token.cancelled:
            raise Cancelled(ctx.token.reason, result)
        if code not in self.ok_codes:
            reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            last = stderr_tail.strip().splitlines()[-1:] or [""]
            raise DbkeeperError(f"{self.argv()[0]} failed: {reason} {last[0]}".strip(), result)
        return Outcome(None, result, f"exit code {code}")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group, SIGKILL to what is left of it after a grace."""
    if not _signal_group(process, signal.SIGTERM):
        return
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or the group never empties
        if not _signal_group(process, 0):
            return
        time.sleep(0.05)
    _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], number: int) -> bool:
    """Signal the process group; False when nothing is left in it."""
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        return False
    return True


def _tail(handle: IO[bytes]) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - TAIL_BYTES))
    return handle.read().decode(errors="replace")
