"""Reading ``dbkeeper.toml``: environment expansion, validation, and errors with file:line.

Every problem in a file is collected and reported together, each naming the
file, the line, the job and the key, so one run of ``dbkeeper check`` shows
everything to fix.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, TypeAdapter, ValidationError

from dbkeeper.chains import chain_problems
from dbkeeper.errors import ConfigError, ScheduleError
from dbkeeper.jobspec import ConfigPath, Duration, JobSpec, Strict
from dbkeeper.schedule import Schedule, load_timezone, parse_schedule
from dbkeeper.targets import resolve_url
from dbkeeper.tasks import KINDS, AnyJob

DEFAULT_PATH = "dbkeeper.toml"
ENV_PATH = "DBKEEPER_CONFIG"
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


# Tasks the HTTP API may define jobs of: none that runs programs or deletes files on the host.
API_JOB_TASKS = ("purge", "vacuum", "optimize", "health", "sql", "export", "backup")


class HttpSettings(Strict):
    listen: str = Field("127.0.0.1:8077", pattern=r"^(\[[0-9a-fA-F:]+\]|[\w.-]+):\d{1,5}$")
    token: str | None = Field(None, min_length=1)
    job_tasks: tuple[str, ...] = API_JOB_TASKS

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class KeeperSettings(Strict):
    state: str | None = None
    timezone: str = "UTC"
    history_retention: Duration = timedelta(days=90)
    shutdown_grace: Duration = timedelta(seconds=30)
    heartbeat: Duration = timedelta(seconds=10)
    lease: Duration = timedelta(seconds=60)
    workers: int = Field(4, ge=1, le=256)
    http: HttpSettings = HttpSettings()
    log_dir: ConfigPath | None = None
    log_retention: Duration = timedelta(days=14)


class DatabaseSettings(Strict):
    url: str


NotifyEvent = Literal["failure", "recovery", "late", "stuck", "dead", "warning"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)


class NotifySettings(Strict):
    """``[notify.NAME]``: where alerts go (Apprise URLs) and which events they hear of."""

    url: str | list[str]
    on: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)


class ConfigFile(Strict):
    keeper: KeeperSettings = KeeperSettings()
    databases: dict[str, DatabaseSettings] = Field(default_factory=dict)
    notify: dict[str, NotifySettings] = Field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = Field(default_factory=dict)


_JOB = TypeAdapter(AnyJob)


@dataclass(frozen=True)
class Config:
    """A validated configuration; jobs keyed by name, schedules already parsed."""

    path: Path
    keeper: KeeperSettings
    databases: dict[str, str]
    jobs: dict[str, JobSpec]
    schedules: dict[str, Schedule | None] = field(default_factory=dict)
    notify: dict[str, NotifySettings] = field(default_factory=dict)

    def where(self, job: str) -> str:
        """``file:line`` of a job's table in the config file (the file alone if not found)."""
        try:
            source = self.path.read_text(encoding="utf-8")
        except OSError:
            source = ""
        line = Locator(source, self.path).line(("jobs", job))
        return f"{self.path}:{line}" if line else str(self.path)

    @property
    def state_url(self) -> str:
        if self.keeper.state:
            return resolve_url(self.keeper.state, self.path.parent)
        return f"sqlite:///{self.path.parent.resolve() / 'dbkeeper-state.db'}"


def default_path() -> Path:
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def load(path: str | Path | None = None) -> Config:
    """Read, expand and validate a config file; raise ConfigError listing every problem."""
    file = Path(path) if path else default_path()
    try:
        source = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{file}: no such config file (create one with `dbkeeper init`)"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    return parse(source, file)


def parse(source: str, file: Path) -> Config:
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: {exc}"]) from None
    locate = Locator(source, file)
    problems: list[str] = []
    unset: set[tuple[str, ...]] = set()
    data = expand(raw, (), locate, problems, unset)

    try:
        parsed = ConfigFile.model_validate(data, context={"base": file.parent})
    except ValidationError as exc:
        for error in exc.errors():
            path = _key_path(error["loc"])
            if path not in unset:  # already reported as a missing variable
                problems.append(locate.message(path, _wording(error)))
        parsed = _salvage(data, exc)
    databases = data.get("databases")
    around = Surroundings(
        databases=frozenset(databases) if isinstance(databases, dict) else frozenset(),
        notifiers=frozenset(parsed.notify),
        timezone=parsed.keeper.timezone if _zone_ok(parsed.keeper.timezone) else "UTC",
        base=file.parent,
    )
    jobs: dict[str, JobSpec] = {}
    schedules: dict[str, Schedule | None] = {}
    for name, job in parsed.jobs.items():
        spec, schedule, found = validate_job(name, job, around)
        problems += [
            locate.message(("jobs", name, *path), text)
            for path, text in found
            if ("jobs", name, *path) not in unset  # already reported as a missing variable
        ]
        if spec is not None:
            jobs[name], schedules[name] = spec, schedule
    for name, key, text in chain_problems(jobs):
        problems.append(locate.message(("jobs", name, key), text))
    return _check(parsed, jobs, schedules, file, locate, problems)


def _salvage(data: dict[str, Any], exc: ValidationError) -> ConfigFile:
    """What is valid in a file with invalid sections, so the rest can still be checked."""
    bad = {tuple(str(part) for part in error["loc"][:2]) for error in exc.errors()}
    kept: dict[str, Any] = {}
    keeper = data.get("keeper")
    if isinstance(keeper, dict) and ("keeper",) not in bad:
        kept["keeper"] = {k: v for k, v in keeper.items() if ("keeper", k) not in bad}
    for section in ("databases", "notify", "jobs"):
        value = data.get(section)
        if isinstance(value, dict) and (section,) not in bad:
            kept[section] = {k: v for k, v in value.items() if (section, k) not in bad}
    try:
        return ConfigFile.model_validate(kept, context={"base": Path.cwd()})
    except ValidationError:
        return ConfigFile()


Problem = tuple[tuple[str, ...], str]  # (key path within the job, what is wrong)


@dataclass(frozen=True)
class Surroundings:
    """What a job is validated against: the databases, notifiers and default time zone
    of its config, and the folder its relative paths start from."""

    databases: frozenset[str]
    notifiers: frozenset[str]
    timezone: str
    base: Path


def validate_job(
    name: str, raw: dict[str, Any], around: Surroundings
) -> tuple[JobSpec | None, Schedule | None, list[Problem]]:
    """Validate one job's options; every problem found, each with its key.

    The same for a job in a config file and one defined at runtime."""
    problems: list[Problem] = []
    spec: JobSpec | None = None
    if "name" in raw:
        problems.append((("name",), "unknown key"))
    else:
        try:
            spec = _JOB.validate_python({**raw, "name": name}, context={"base": around.base})
        except ValidationError as exc:
            for error in exc.errors():
                path = _key_path(("jobs", name, *error["loc"]))[2:]
                if error["type"] == "union_tag_invalid":
                    path = (*path, "task")
                problems.append((path, _wording(error)))
    # Checked on the raw keys too, so a job with other problems still shows these.
    target, schedule, zone = raw.get("database"), raw.get("schedule"), raw.get("timezone")
    notifiers = raw.get("notify")
    for notifier in notifiers if isinstance(notifiers, list) else []:
        if isinstance(notifier, str) and notifier not in around.notifiers:
            known = ", ".join(sorted(around.notifiers)) or "none defined"
            problems.append((("notify",), f"unknown notifier {notifier!r} (notifiers: {known})"))
    if isinstance(target, str) and target not in around.databases:
        known = ", ".join(sorted(around.databases)) or "none defined"
        problems.append((("database",), f"unknown database {target!r} (databases: {known})"))
    zone = zone if isinstance(zone, str) else around.timezone
    parsed: Schedule | None = None
    try:
        load_timezone(zone)
    except ScheduleError as exc:
        problems.append((("timezone",), str(exc)))
    else:
        if isinstance(schedule, str):
            try:
                parsed = parse_schedule(schedule, zone)
            except ScheduleError as exc:
                problems.append((("schedule",), str(exc)))
    if problems:  # in the order of the keys given
        order = {key: index for index, key in enumerate(raw)}
        problems.sort(key=lambda problem: order.get(next(iter(problem[0]), ""), len(order)))
        return None, None, problems
    return spec, parsed, []


def job_problem(name: str, path: tuple[str, ...], text: str) -> str:
    """A problem of a job that has no file: ``job 'x', key 'older_than': ...``."""
    return f"{subject(('jobs', name, *path))}: {text}"


def _zone_ok(zone: str) -> bool:
    try:
        load_timezone(zone)
    except ScheduleError:
        return False
    return True


def _check(
    parsed: ConfigFile,
    jobs: dict[str, JobSpec],
    schedules: dict[str, Schedule | None],
    file: Path,
    locate: Locator,
    problems: list[str],
) -> Config:
    try:
        load_timezone(parsed.keeper.timezone)
    except ScheduleError as exc:
        problems.append(locate.message(("keeper", "timezone"), str(exc)))
    databases: dict[str, str] = {}
    for name, database in parsed.databases.items():
        try:
            databases[name] = resolve_url(database.url, file.parent)
        except ValueError as exc:
            problems.append(locate.message(("databases", name, "url"), str(exc)))
    if problems:
        raise ConfigError(sorted(problems, key=locate.line_of_message))
    return Config(
        path=file,
        keeper=parsed.keeper,
        databases=databases,
        jobs=jobs,
        schedules=schedules,
        notify=dict(parsed.notify),
    )


def job_schedule(job: JobSpec, default_timezone: str) -> Schedule | None:
    if job.schedule is None:
        return None
    return parse_schedule(job.schedule, job.timezone or default_timezone)


def expand(
    value: Any,
    path: tuple[str, ...],
    locate: Locator,
    problems: list[str],
    unset: set[tuple[str, ...]],
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a dollar.

    Keys whose variables are not set are added to ``unset``."""
    if isinstance(value, dict):
        return {
            key: expand(item, (*path, key), locate, problems, unset) for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand(item, path, locate, problems, unset) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None and (found or default is None):
            return found
        if default is not None:
            return default
        unset.add(path)
        problems.append(
            locate.message(
                path, f"environment variable {name} is not set (use ${{{name}:-default}})"
            )
        )
        return ""

    return _VARIABLE.sub(substitute, value)


def _key_path(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    parts = [str(part) for part in loc]
    # A job's loc carries the task tag after the job name: jobs.NAME.purge.older_than
    if len(parts) >= 3 and parts[0] == "jobs" and parts[2] in KINDS:
        del parts[2]
    return tuple(parts)


def _wording(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown task {error['ctx']['tag']!r} (tasks: {', '.join(KINDS)})"
    if kind == "union_tag_not_found":
        return "required key 'task' is missing"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    given = error.get("input")
    if kind not in ("value_error",) and not isinstance(given, dict | list):
        message += f" (got {given!r})"
    return message


class Locator:
    """Finds the line of a key in TOML text, for messages like ``file:12: jobs.x.y: ...``."""

    def __init__(self, source: str, file: Path) -> None:
        self.file = file
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        in_multiline = False
        for number, line in enumerate(source.splitlines(), start=1):
            if in_multiline:
                if line.count('"""') % 2 or line.count("'''") % 2:
                    in_multiline = False
                continue
            header = _HEADER.match(line)
            if header and "=" not in header.group(1):
                table = _split_key(header.group(1))
                self.lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                self.lines.setdefault((*table, *_split_key(key.group(1))), number)
                if line.count('"""') % 2 or line.count("'''") % 2:
                    in_multiline = True

    def line(self, path: tuple[str, ...]) -> int | None:
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def line_of_message(self, message: str) -> int:
        """The line a message from ``message()`` points at (0 when it names none)."""
        where = message.removeprefix(f"{self.file}:").split(":", 1)[0]
        return int(where) if where.isdigit() else 0

    def message(self, path: tuple[str, ...], text: str) -> str:
        line = self.line(path)
        where = f"{self.file}:{line}" if line else str(self.file)
        return f"{where}: {subject(path)}: {text}" if path else f"{where}: {text}"


def subject(path: tuple[str, ...]) -> str:
    """What a key path names, for people: ``job 'x', key 'older_than'`` or ``keeper.state``."""
    if len(path) >= 2 and path[0] == "jobs":
        rest = ".".join(path[2:])
        return f"job {path[1]!r}" + (f", key {rest!r}" if rest else "")
    return ".".join(path)


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return tuple("".join(part) for part in parts)
