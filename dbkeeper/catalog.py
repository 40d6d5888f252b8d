"""The jobs a Keeper knows: declared (config file, ``@keeper.job``) and defined at runtime.

Runtime jobs (``POST/PUT/DELETE /api/jobs/{name}``, ``dbkeeper job``,
``keeper.add_job``) live in the state store with the options exactly as given, and
are validated like a config file's jobs, with the same messages. Every change, and
every pause or resume of any job, bumps one version number in the store, in the
transaction that makes it; a node reloads its jobs when the number moves, and the
scheduler reads it (held) in the transaction of its claims, so no slot is claimed
under a definition that has since changed. Declared jobs are read-only here: their
file is their source of truth.
"""

from __future__ import annotations

import getpass
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from dbkeeper.chains import chain_problems
from dbkeeper.config import Config, Surroundings, job_problem, validate_job
from dbkeeper.errors import ConfigError, DbkeeperError, UnknownJob
from dbkeeper.jobspec import JobSpec
from dbkeeper.models import JobDefinition, JobState, Pause
from dbkeeper.schedule import Schedule
from dbkeeper.store import StateStore, now

log = logging.getLogger("dbkeeper.catalog")

RUNTIME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
Source = Literal["config", "python", "runtime"]
DefineMode = Literal["add", "replace", "merge"]


class ReadOnlyJob(DbkeeperError):
    """The job is declared in the config file (or in Python) and can be changed only there."""


class JobExists(DbkeeperError):
    """A job of that name exists."""


def default_actor() -> str:
    """Who makes a change when nobody says: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class JobSet:
    """Every job as of one version of the runtime definitions, pauses applied."""

    version: int
    jobs: dict[str, JobSpec]
    schedules: dict[str, Schedule | None]
    sources: dict[str, Source]
    paused: dict[str, Pause] = field(default_factory=dict)
    # Every stored definition, loaded or not (one this node cannot load can still be fixed).
    definitions: dict[str, JobDefinition] = field(default_factory=dict)
    # Runtime jobs this node cannot load (the config changed under them), with why.
    invalid: dict[str, list[str]] = field(default_factory=dict)

    @cached_property
    def followers(self) -> dict[tuple[str, bool], list[str]]:
        """The jobs an end of a job starts: (job, succeeded) -> their names, in order."""
        found: dict[tuple[str, bool], list[str]] = {}
        for name, job in sorted(self.jobs.items()):
            for upstream in job.after:
                found.setdefault((upstream, True), []).append(name)
            for upstream in job.after_failure:
                found.setdefault((upstream, False), []).append(name)
        return found


class Catalog:
    def __init__(self, config: Config, store: Callable[[], StateStore]) -> None:
        self.config = config
        self._store = store
        self.declared: dict[str, JobSpec] = dict(config.jobs)
        self.declared_schedules: dict[str, Schedule | None] = dict(config.schedules)
        self.python: set[str] = set()
        self._set: JobSet | None = None

    @property
    def store(self) -> StateStore:
        return self._store()

    def surroundings(self) -> Surroundings:
        return Surroundings(
            databases=frozenset(self.config.databases),
            notifiers=frozenset(self.config.notify),
            timezone=self.config.keeper.timezone,
            base=self.config.path.parent,
        )

    # -- reading --------------------------------------------------------------

    @property
    def current(self) -> JobSet:
        if self._set is None:
            self.refresh()
        assert self._set is not None
        return self._set

    def declare(self, spec: JobSpec, schedule: Schedule | None) -> None:
        """A job written in Python (``@keeper.job``): known to this process only."""
        self.declared[spec.name] = spec
        self.declared_schedules[spec.name] = schedule
        self.python.add(spec.name)
        self._set = None

    def refresh(self, *, hold: bool = False) -> bool:
        """Reload the runtime jobs if they changed; whether they did."""
        store = self.store
        version = store.jobs_version(hold=hold)
        if self._set is not None and self._set.version == version:
            return False
        self._set = self._build(version, store.definitions(), store.job_states())
        for name, problems in self._set.invalid.items():
            log.warning("runtime job %r is not loaded: %s", name, "; ".join(problems))
        return True

    def _build(
        self, version: int, definitions: list[JobDefinition], states: dict[str, JobState]
    ) -> JobSet:
        jobs = dict(self.declared)
        schedules = dict(self.declared_schedules)
        sources: dict[str, Source] = {
            name: "python" if name in self.python else "config" for name in jobs
        }
        invalid: dict[str, list[str]] = {}
        around = self.surroundings()
        for definition in definitions:
            name = definition.name
            if name in self.declared:
                invalid[name] = [f"job {name!r} of the same name in {self.config.path} wins"]
                continue
            spec, schedule, problems = validate_job(name, definition.options, around)
            if spec is None:
                invalid[name] = [job_problem(name, path, text) for path, text in problems]
                continue
            jobs[name], schedules[name], sources[name] = spec, schedule, "runtime"
        # A runtime job whose upstream is gone (the config changed) cannot be loaded.
        while broken := [p for p in chain_problems(jobs) if sources[p[0]] == "runtime"]:
            for name, key, text in broken:
                invalid.setdefault(name, []).append(job_problem(name, (key,), text))
                jobs.pop(name, None)
        paused = {
            name: state.paused
            for name, state in states.items()
            if state.paused is not None and name in jobs
        }
        for name in paused:
            jobs[name] = jobs[name].model_copy(update={"enabled": False})
        return JobSet(
            version=version,
            jobs=jobs,
            schedules={name: schedules[name] for name in jobs},
            sources={name: sources[name] for name in jobs},
            paused=paused,
            definitions={d.name: d for d in definitions},
            invalid=invalid,
        )

    def get(self, name: str) -> JobSpec:
        try:
            return self.current.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.current.jobs)) or "none"
            raise UnknownJob(f"no job named {name!r} (jobs: {known})") from None

    # -- changing -------------------------------------------------------------

    def define(
        self,
        name: str,
        options: dict[str, Any],
        *,
        by: str | None = None,
        mode: DefineMode = "add",
        unset: tuple[str, ...] = (),
        tasks: tuple[str, ...] | None = None,
        check: Callable[[JobSpec], None] | None = None,
    ) -> tuple[JobSpec, bool]:
        """Add (``add``), replace or create (``replace``) or update some keys of (``merge``)
        a runtime job. ``tasks`` limits the tasks it may have; ``check`` checks it against
        its database. Returns the job and whether it is new. Invalid options raise
        ConfigError with the messages a config file (and ``dbkeeper check``) gives."""
        self._writable(name)
        store = self.store
        with store.changing_jobs() as conn:
            self.refresh()
            existing = self.current.definitions.get(name)
            if mode == "add" and existing is not None:
                raise JobExists(f"job {name!r} exists (change it with PUT or `dbkeeper job set`)")
            if mode == "merge" and existing is None:
                raise UnknownJob(f"no runtime job named {name!r}")
            if mode == "merge" and existing is not None:
                options = {**existing.options, **options}
                for key in unset:
                    options.pop(key, None)
            for task in (options.get("task"), existing.options.get("task") if existing else None):
                if tasks is not None and task is not None and task not in tasks:
                    raise ReadOnlyJob(
                        f"job {name!r}: task {task!r} cannot be defined here "
                        f"(allowed: {', '.join(tasks) or 'none'}; see [keeper.http] job_tasks)"
                    )
            spec, _, problems = validate_job(name, options, self.surroundings())
            if spec is not None:
                # The other jobs are valid together: what is wrong now comes from this one.
                others = {n: j for n, j in self.current.jobs.items() if n != name}
                problems = [
                    ((key if job == name else "after",), text)
                    for job, key, text in chain_problems({**others, name: spec})
                ]
            if spec is not None and not problems and check is not None:
                try:
                    check(spec)
                except DbkeeperError as exc:
                    problems = [((), str(exc))]
            if problems:
                raise ConfigError([job_problem(name, path, text) for path, text in problems])
            store.put_definition(conn, name, options, self.actor(by), new=existing is None)
            action = "added" if existing is None else "changed"
            store.record_change(conn, name, action, self.actor(by), {"options": options})
            self._set = None
        assert spec is not None
        return spec, existing is None

    def remove(self, name: str, *, by: str | None = None) -> int:
        """Remove a runtime job (its history stays); returns how many queued runs it cancelled."""
        self._writable(name)
        store = self.store
        with store.changing_jobs() as conn:
            self.refresh()
            definition = self.current.definitions.get(name)
            if definition is None:
                raise UnknownJob(f"no runtime job named {name!r}")
            dependents = sorted(
                other
                for other, job in self.current.jobs.items()
                if name in (*job.after, *job.after_failure)
            )
            if dependents:
                raise DbkeeperError(
                    f"job {name!r} comes before {', '.join(dependents)} (their `after`): "
                    "change or remove those first"
                )
            cancelled = store.delete_definition(conn, name)
            store.record_change(
                conn,
                name,
                "removed",
                self.actor(by),
                {"options": definition.options, "queued_runs_cancelled": cancelled},
            )
            self._set = None
        return cancelled

    def pause(self, name: str, *, by: str | None = None, reason: str = "") -> bool:
        """Pause any job (no slots claimed, chains stop at it); False if it already was."""
        store = self.store
        with store.changing_jobs() as conn:
            self.refresh()
            self.get(name)
            if name in self.current.paused:
                return False
            store.set_pause(conn, name, Pause(at=now(), by=self.actor(by), reason=reason))
            store.record_change(conn, name, "paused", self.actor(by), {"reason": reason})
            self._set = None
        return True

    def resume(self, name: str, *, by: str | None = None) -> bool:
        """Resume a paused job from its next slot (no catch-up); False if it was not paused."""
        store = self.store
        with store.changing_jobs() as conn:
            self.refresh()
            job = self.get(name)
            if name not in self.current.paused:
                if not job.enabled:
                    raise DbkeeperError(
                        f"job {name!r} is disabled in its definition (enabled = false), "
                        "not paused: change it there"
                    )
                return False
            store.set_pause(conn, name, None)
            store.record_change(conn, name, "resumed", self.actor(by), {})
            self._set = None
        return True

    def actor(self, by: str | None) -> str:
        return (by or default_actor())[:200]

    def _writable(self, name: str) -> None:
        if name in self.python:
            raise ReadOnlyJob(f"job {name!r} is declared in Python; change it there")
        if name in self.declared:
            raise ReadOnlyJob(
                f"job {name!r} is defined in {self.config.where(name)}; change it there"
            )
        if not RUNTIME_NAME.match(name):
            raise ConfigError(
                [
                    f"job {name!r}: a runtime job's name is 1-128 letters, digits, "
                    "'_', '-' or '.', starting with a letter or digit"
                ]
            )
