"""The ``dbkeeper`` command: a thin skin over Keeper. Each command loads, calls, prints."""

from __future__ import annotations

import getpass
import logging
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape

from dbkeeper import logs, output, systemd
from dbkeeper.config import default_path
from dbkeeper.errors import DbkeeperError
from dbkeeper.keeper import ChainProgress, Keeper
from dbkeeper.models import JobChange, Run, RunStatus
from dbkeeper.schedule import parse_schedule
from dbkeeper.units import format_size
from dbkeeper.version import __version__

F = TypeVar("F", bound=Callable[..., Any])


def config_option(command: F) -> F:
    """-c/--config, accepted after the subcommand as well as before it."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file [default: ./dbkeeper.toml or $DBKEEPER_CONFIG].",
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")(command)


def keeper_from(ctx: click.Context, config_path: Path | None) -> Keeper:
    root = ctx.find_root()
    path = config_path or root.params.get("config_path") or default_path()
    keeper = Keeper.from_config(path)
    ctx.call_on_close(keeper.close)
    settings = keeper.config.keeper
    if settings.log_dir:
        logs.to_files(Path(settings.log_dir), settings.log_retention, root.params["log_format"])
    return keeper


class Group(click.Group):
    """Turns DbkeeperError into a message and exit status 1 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DbkeeperError as exc:
            if ctx.params.get("debug"):
                raise
            output.errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            sys.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Logs as text for people or one JSON object per line for log shippers.",
)
@click.version_option(__version__, prog_name="dbkeeper")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, debug: bool, log_format: str) -> None:
    """Keep databases healthy: scheduled purges, vacuums, health checks, with history.

    Jobs are declared in dbkeeper.toml (see `dbkeeper init`).
    """
    ctx.obj = logs.setup(log_format, debug)


def _print_runs(runs: list[Run], title: str | None = None) -> None:
    output.table(
        title,
        ["run", "job", "status", "slot (UTC)", "took", "rows", "error"],
        [
            (
                f"{run.id}" + (f"/{run.attempt}" if run.attempt > 1 else ""),
                run.job,
                output.styled(run.status.value),
                f"{run.scheduled_for:%Y-%m-%d %H:%M:%S}",
                f"{run.duration:.2f}s" if run.duration is not None else "",
                run.rows_affected if run.rows_affected is not None else "",
                (run.error or "")[:200],
            )
            for run in runs
        ],
    )


@main.command()
@click.option(
    "--path",
    "target",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("dbkeeper.toml"),
    show_default=True,
    help="Where to write it.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(target: Path, force: bool) -> None:
    """Write a commented starter dbkeeper.toml.

    \b
    Examples:
      dbkeeper init
      dbkeeper init --path /etc/dbkeeper/dbkeeper.toml
    """
    if target.exists() and not force:
        raise DbkeeperError(f"{target} already exists (use --force to overwrite)")
    target.write_text(resources.files("dbkeeper").joinpath("starter.toml").read_text())
    output.console.print(f"wrote {target}; edit it, then run `dbkeeper check`")


@main.command()
@config_option
@json_option
@click.pass_context
def check(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Validate the config against the real databases; every problem with its file:line.

    \b
    Examples:
      dbkeeper check
      dbkeeper -c /etc/dbkeeper.toml check --json
    """
    keeper = keeper_from(ctx, config_path)
    problems = keeper.check()
    if as_json:
        output.emit_json({"ok": not problems, "problems": problems, "jobs": len(keeper.jobs)})
    elif problems:
        for problem in problems:
            output.errors.print(problem, highlight=False, markup=False)
    else:
        output.console.print(f"[green]ok[/green]: {len(keeper.jobs)} jobs checked")
    if problems:
        sys.exit(1)


@main.command()
@config_option
@json_option
@click.pass_context
def jobs(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Each job, its schedule in words, next run and last outcome.

    \b
    Examples:
      dbkeeper jobs
      dbkeeper jobs --json
    """
    rows = keeper_from(ctx, config_path).overview()
    if as_json:
        output.emit_json(rows)
        return
    output.table(
        None,
        ["job", "task", "schedule", "next run (UTC)", "last run", "health"],
        [
            (
                row["name"],
                row["task"],
                row["schedule_words"],
                output.when(row["next_run"]),
                _last_outcome(row["last_run"]),
                output.styled(row["health"]),
            )
            for row in rows
        ],
    )


def _last_outcome(run: dict[str, Any] | None) -> str:
    if run is None:
        return "never"
    moment = datetime.fromisoformat(run["finished_at"] or run["created_at"])
    ago = output.relative((moment - datetime.now(UTC)).total_seconds())
    return f"{output.styled(run['status'])} ({ago})"


@main.command(name="next")
@click.argument("job", required=False)
@click.option("--cron", "expression", help="A schedule to explain instead of a job's.")
@click.option("--timezone", "zone", help="Time zone for --cron [default: UTC].")
@click.option("--after", "after", help="Start from this ISO time instead of now.")
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="How many fire times.",
)
@config_option
@json_option
@click.pass_context
def next_(
    ctx: click.Context,
    job: str | None,
    expression: str | None,
    zone: str | None,
    after: str | None,
    count: int,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """The next fire times of a job or a cron expression, in local time and UTC.

    \b
    Examples:
      dbkeeper next purge-logs
      dbkeeper next --cron "30 2 * * *" --timezone Europe/Berlin -n 3
      dbkeeper next --cron "every 6h" --after 2026-03-29T00:00:00Z
    """
    if (job is None) == (expression is None):
        raise click.UsageError("give either a JOB or --cron EXPR")
    if expression is not None:
        schedule = parse_schedule(expression, zone or "UTC")
    else:
        if zone:
            raise click.UsageError("--timezone goes with --cron; a job has its own")
        keeper = keeper_from(ctx, config_path)
        found = keeper.schedules.get(keeper.get(job or "").name)
        if found is None:
            raise DbkeeperError(f"job {job!r} has no schedule; it runs only when asked")
        schedule = found
    start = datetime.now(UTC)
    if after:
        try:
            start = datetime.fromisoformat(after.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(
                f"{after!r} is not an ISO time", param_hint="--after"
            ) from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=schedule.timezone)
    times = schedule.upcoming(start, count)
    if as_json:
        output.emit_json(
            {
                "schedule": schedule.text,
                "description": schedule.describe(),
                "timezone": schedule.timezone.key,
                "times": [
                    {
                        "local": moment.astimezone(schedule.timezone).isoformat(),
                        "utc": moment.isoformat(),
                    }
                    for moment in times
                ],
            }
        )
        return
    output.console.print(f"{schedule.text}: [bold]{schedule.describe()}[/bold]")
    output.table(
        None,
        [f"local ({schedule.timezone.key})", "UTC"],
        [
            (f"{m.astimezone(schedule.timezone):%a %Y-%m-%d %H:%M:%S %Z}", f"{m:%Y-%m-%d %H:%M:%S}")
            for m in times
        ],
    )


@main.command()
@click.argument("job")
@config_option
@json_option
@click.pass_context
def preview(ctx: click.Context, job: str, config_path: Path | None, as_json: bool) -> None:
    """What a job would do now, changing nothing.

    \b
    Examples:
      dbkeeper preview purge-logs
      dbkeeper preview purge-logs --json
    """
    result = keeper_from(ctx, config_path).preview(job)
    if as_json:
        output.emit_json(result)
        return
    samples = result.pop("samples", None)
    output.key_values(
        f"preview of {job}", [(key, value) for key, value in result.items() if value is not None]
    )
    if samples:
        output.table("sample rows", list(samples[0]), [list(row.values()) for row in samples])


@main.command(name="install-systemd")
@click.option(
    "--mode",
    type=click.Choice(["service", "timer"]),
    default="service",
    show_default=True,
    help="service: a long-running `start`; timer: a timer running `tick`.",
)
@click.option("--name", default="dbkeeper", show_default=True, help="Unit name.")
@click.option("--user", default=getpass.getuser(), show_default=True, help="Run as this user.")
@click.option(
    "--env-file",
    type=click.Path(path_type=Path),
    default=Path("/etc/dbkeeper/env"),
    show_default=True,
    help="Environment file for secrets (DBKEEPER_TOKEN=..., database passwords).",
)
@click.option(
    "--on-calendar",
    default="minutely",
    show_default=True,
    help="With --mode timer: when to tick (systemd OnCalendar).",
)
@click.option(
    "--output",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/etc/systemd/system"),
    show_default=True,
    help="Folder the unit files are written to.",
)
@click.option("--force", is_flag=True, help="Replace existing unit files.")
@config_option
@click.pass_context
def install_systemd(
    ctx: click.Context,
    mode: str,
    name: str,
    user: str,
    env_file: Path,
    on_calendar: str,
    folder: Path,
    force: bool,
    config_path: Path | None,
) -> None:
    """Write systemd units for this config, and print how to enable them.

    \b
    Examples:
      sudo dbkeeper -c /srv/app/dbkeeper.toml install-systemd --user app
      dbkeeper install-systemd --mode timer --on-calendar '*:0/5' --output ./units
    """
    keeper = keeper_from(ctx, config_path)  # the config must be valid before it is installed
    executable = Path(sys.argv[0]).resolve()
    files = systemd.units(
        name=name,
        mode=mode,
        dbkeeper=executable,
        config=keeper.config.path.resolve(),
        user=user,
        env_file=env_file,
        on_calendar=on_calendar,
    )
    existing = [folder / file for file in files if (folder / file).exists()]
    if existing and not force:
        raise DbkeeperError(f"{existing[0]} exists (use --force to replace it)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for file, content in files.items():
            (folder / file).write_text(content, encoding="utf-8")
    except OSError as exc:
        raise DbkeeperError(f"cannot write to {folder}: {exc.strerror} (run with sudo?)") from None
    unit = f"{name}.timer" if mode == "timer" else f"{name}.service"
    for file in files:
        click.echo(f"wrote {folder / file}")
    click.echo("enable it with:")
    click.echo("  sudo systemctl daemon-reload")
    click.echo(f"  sudo systemctl enable --now {unit}")
    click.echo(f"  journalctl -u {name}.service -f")


@main.command(name="restore-archive")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--database", required=True, help="Database (from the config) to put rows into.")
@click.option("--table", required=True, help="Table to put rows into.")
@config_option
@json_option
@click.pass_context
def restore_archive(
    ctx: click.Context,
    file: Path,
    database: str,
    table: str,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Put the rows of a purge archive back, all or none.

    FILE is an archive file written by a purge with `archive` (or its
    .manifest.jsonl); every batch whose delete committed is inserted, in one
    transaction.

    \b
    Examples:
      dbkeeper restore-archive archive/logs/2026-11-23.csv.gz --database app --table logs
    """
    result = keeper_from(ctx, config_path).restore_archive(file, database, table)
    if as_json:
        output.emit_json(result)
        return
    output.key_values(f"restored into {database}.{table}", list(result.items()))


@contextmanager
def _progress(show: bool) -> Iterator[ChainProgress | None]:
    """A progress bar per job on stderr (when it is a terminal), fed by the callback given."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[rows]}"),
        TimeElapsedColumn(),
        console=output.errors,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(job: str, percent: float, rows: int | None, _message: str) -> None:
        if job not in tasks:
            tasks[job] = bars.add_task(job, total=100, rows="")
        bars.update(tasks[job], completed=percent, rows=f"{rows} rows" if rows else "")

    with bars:
        yield update


@main.command()
@click.argument("names", metavar="JOB...", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every job, in config order.")
@click.option(
    "--with-downstream",
    is_flag=True,
    help="Then run, here and in order, the jobs that come after it (`after`, `after_failure`).",
)
@config_option
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    names: tuple[str, ...],
    run_all: bool,
    with_downstream: bool,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Run jobs now in the foreground, recorded like scheduled runs; exit 1 if any failed.

    \b
    Examples:
      dbkeeper run purge-logs
      dbkeeper run fetch-catalogue --with-downstream
      dbkeeper run --all --json
    """
    if bool(names) == run_all:
        raise click.UsageError("name one or more jobs, or use --all")
    keeper = keeper_from(ctx, config_path)
    selected = list(keeper.jobs) if run_all else [keeper.get(name).name for name in names]
    runs: list[Run] = []
    show_progress = not as_json and output.errors.is_terminal
    for name in selected:
        with _progress(show_progress) as update:
            if with_downstream:
                ended = keeper.run_chain(name, on_progress=update)
            else:
                ended = iter([keeper.run(name, on_progress=update and partial(update, name))])
            for result in ended:
                runs.append(result)
                if not as_json:
                    _print_outcome(result)
    if as_json:
        output.emit_json([run.to_dict() for run in runs])
    if any(run.status is not RunStatus.SUCCEEDED for run in runs):
        sys.exit(1)


def _print_outcome(run: Run) -> None:
    summary = _summary(run)
    output.console.print(
        f"{run.job}: {output.styled(run.status.value)}" + (f" - {summary}" if summary else ""),
        highlight=False,
    )
    if stopped := run.result.get("chain_stopped"):
        output.console.print(
            f"chain stopped at {run.job}: not run: {', '.join(stopped)}", highlight=False
        )


def _summary(run: Run) -> str:
    if run.error:
        return run.error
    parts = []
    summary = run.result.get("summary")
    if run.rows_affected is not None and not summary:
        parts.append(f"{run.rows_affected} rows")
    if run.duration is not None:
        parts.append(f"{run.duration:.2f}s")
    if summary:
        parts.append(str(summary))
    return ", ".join(parts)


@main.group()
def job() -> None:
    """Define, change, pause and remove jobs while dbkeeper runs.

    Jobs defined here live in the state store and every node picks them up
    without a restart; they take the keys of a config file's job, given as
    KEY=VALUE (VALUE is read as TOML when it can be: 3, true, ["ops"]; else as
    text). Jobs of the config file can be paused and resumed here, not changed.

    \b
    Examples:
      dbkeeper job add user-42-cleanup task=purge database=app table=logs \\
          column=created_at older_than=30d schedule="0 3 * * *"
      dbkeeper job set user-42-cleanup older_than=60d
      dbkeeper job pause purge-logs --reason "investigating a restore"
      dbkeeper job resume purge-logs
      dbkeeper job remove user-42-cleanup
    """


def by_option(command: F) -> F:
    return click.option(
        "--by", help="Who makes the change, for the change log [default: user@host]."
    )(command)


def _options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="KEY=VALUE")
        try:
            options[key.strip()] = tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = value
    return options


def _show_job(keeper: Keeper, name: str, as_json: bool, said: str = "") -> None:
    described = keeper.describe(name)
    if as_json:
        output.emit_json(described)
        return
    if said:
        output.console.print(said, highlight=False)
    pause = described["paused"]
    paused = "no"
    if pause:
        paused = f"by {pause['by']} at {pause['at']}" + (
            f": {pause['reason']}" if pause["reason"] else ""
        )
    output.key_values(
        f"job {name} ({described['source']})",
        [
            ("task", described["task"]),
            ("runs", described["schedule_words"]),
            ("next run", output.when(described["next_run"])),
            ("then", ", ".join(described["downstream"]) or "-"),
            ("health", output.styled(described["health"])),
            ("paused", paused),
        ],
    )


@job.command(name="add")
@click.argument("name")
@click.argument("pairs", metavar="KEY=VALUE...", nargs=-1, required=True)
@by_option
@config_option
@json_option
@click.pass_context
def job_add(
    ctx: click.Context,
    name: str,
    pairs: tuple[str, ...],
    by: str | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Define a new job (an error if the name is taken)."""
    keeper = keeper_from(ctx, config_path)
    keeper.add_job(name, by=by, **_options(pairs))
    _show_job(keeper, name, as_json, f"added job {name}")


@job.command(name="set")
@click.argument("name")
@click.argument("pairs", metavar="KEY=VALUE...", nargs=-1)
@click.option("--unset", "unset", multiple=True, metavar="KEY", help="Remove a key (repeatable).")
@by_option
@config_option
@json_option
@click.pass_context
def job_set(
    ctx: click.Context,
    name: str,
    pairs: tuple[str, ...],
    unset: tuple[str, ...],
    by: str | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Change some keys of a runtime job; a new schedule counts from its next slot."""
    if not pairs and not unset:
        raise click.UsageError("give KEY=VALUE pairs to set or --unset KEY")
    keeper = keeper_from(ctx, config_path)
    keeper.set_job(name, _options(pairs), by=by, unset=unset)
    _show_job(keeper, name, as_json, f"changed job {name}")


@job.command(name="pause")
@click.argument("name")
@click.option("--reason", default="", help="Why, for the change log and the dashboard.")
@by_option
@config_option
@json_option
@click.pass_context
def job_pause(
    ctx: click.Context,
    name: str,
    reason: str,
    by: str | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Pause any job: its slots pass unrun and chains stop at it, until `job resume`."""
    keeper = keeper_from(ctx, config_path)
    changed = keeper.pause(name, by=by, reason=reason)
    _show_job(keeper, name, as_json, f"paused {name}" if changed else f"{name} was already paused")


@job.command(name="resume")
@click.argument("name")
@by_option
@config_option
@json_option
@click.pass_context
def job_resume(
    ctx: click.Context, name: str, by: str | None, config_path: Path | None, as_json: bool
) -> None:
    """Resume a paused job from its next slot (the slots it missed are not run)."""
    keeper = keeper_from(ctx, config_path)
    changed = keeper.resume(name, by=by)
    _show_job(keeper, name, as_json, f"resumed {name}" if changed else f"{name} was not paused")


@job.command(name="remove")
@click.argument("name")
@by_option
@config_option
@json_option
@click.pass_context
def job_remove(
    ctx: click.Context, name: str, by: str | None, config_path: Path | None, as_json: bool
) -> None:
    """Remove a runtime job; its history stays (`dbkeeper history NAME`)."""
    cancelled = keeper_from(ctx, config_path).remove_job(name, by=by)
    if as_json:
        output.emit_json({"removed": name, "queued_runs_cancelled": cancelled})
        return
    note = f" ({cancelled} queued runs cancelled)" if cancelled else ""
    output.console.print(f"removed job {name}{note}; its history stays", highlight=False)


@job.command(name="show")
@click.argument("name")
@config_option
@json_option
@click.pass_context
def job_show(ctx: click.Context, name: str, config_path: Path | None, as_json: bool) -> None:
    """One job: where it is defined, what starts it, what it starts, pause, changes."""
    keeper = keeper_from(ctx, config_path)
    _show_job(keeper, name, as_json)
    if not as_json:
        _print_changes(keeper.changes(name, limit=20))


def _print_changes(changes: list[JobChange]) -> None:
    if changes:
        output.table(
            "changes",
            ["when (UTC)", "job", "change", "by", "detail"],
            [
                (
                    f"{change.at:%Y-%m-%d %H:%M:%S}",
                    change.job,
                    change.action,
                    change.by,
                    change.detail.get("reason") or "",
                )
                for change in changes
            ],
        )


@main.command()
@config_option
@json_option
@click.pass_context
def tick(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Run whatever is due (and missed slots within their grace), then exit.

    For crontab, systemd timers, Kubernetes CronJobs and CI schedules; exit 1 if a run failed.

    \b
    Examples:
      * * * * *  dbkeeper -c /srv/app/dbkeeper.toml tick
      dbkeeper tick --json
    """
    runs = keeper_from(ctx, config_path).tick()
    if as_json:
        output.emit_json([run.to_dict() for run in runs])
    elif runs:
        _print_runs(runs)
    else:
        output.console.print("nothing due")
    if any(run.status is not RunStatus.SUCCEEDED for run in runs):
        sys.exit(1)


@main.command()
@config_option
@click.option("--no-http", is_flag=True, help="Run the scheduler without the HTTP API.")
@click.pass_context
def start(ctx: click.Context, config_path: Path | None, no_http: bool) -> None:
    """Run the scheduler and the HTTP API until SIGTERM or SIGINT (running jobs finish
    or are recorded).

    The API listens on [keeper.http] listen (default 127.0.0.1:8077): dashboard at /,
    JSON under /api, Prometheus metrics at /metrics, liveness at /healthz.

    \b
    Examples:
      dbkeeper start
      dbkeeper -c /etc/dbkeeper.toml start --no-http
    """
    stderr: logging.Handler = ctx.find_root().obj
    if stderr.level > logging.INFO:
        stderr.setLevel(logging.INFO)  # the service narrates what it does
    keeper_from(ctx, config_path).start(http=not no_http)


@main.command()
@config_option
@json_option
@click.pass_context
def status(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Job health (healthy, late, failing, stuck, dead, disabled), scheduler nodes (alive or
    dead) and runs in flight.

    \b
    Examples:
      dbkeeper status
      dbkeeper status --json
    """
    data = keeper_from(ctx, config_path).status()
    if as_json:
        output.emit_json(data)
        return
    output.table(
        "jobs",
        ["job", "health", "schedule", "next run (UTC)", "last run"],
        [
            (
                row["name"],
                output.styled(row["health"])
                + (f" x{row['consecutive_failures']}" if row["consecutive_failures"] else "")
                + (f"\n{row['health_reason']}" if row["health_reason"] else ""),
                row["schedule_words"],
                output.when(row["next_run"]),
                _last_outcome(row["last_run"]),
            )
            for row in data["jobs"]
        ],
    )
    recent = [node for node in data["nodes"] if node["alive"] or node["stopped_at"] is None]
    if recent:
        output.table(
            "nodes",
            ["node", "role", "host", "pid", "version", "heartbeat", "alive"],
            [
                (
                    n["id"],
                    n["role"],
                    n["host"],
                    n["pid"],
                    n["version"],
                    output.when(n["heartbeat_at"]),
                    "yes" if n["alive"] else "[red]no[/red]",
                )
                for n in recent
            ],
        )
    else:
        output.console.print("no scheduler is running (start one with `dbkeeper start`)")
    if data["running"]:
        output.table(
            "running",
            ["run", "job", "slot (UTC)", "attempt", "started", "progress", "node"],
            [
                (
                    run["id"],
                    run["job"],
                    output.when(run["scheduled_for"]),
                    run["attempt"],
                    output.when(run["started_at"]),
                    f"{run['progress']:.0f}%",
                    run["node"] or "-",
                )
                for run in data["running"]
            ],
        )


@main.command()
@click.argument("job", required=False)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, 100_000),
    default=20,
    show_default=True,
    help="How many runs, newest first.",
)
@config_option
@json_option
@click.pass_context
def history(
    ctx: click.Context, job: str | None, limit: int, config_path: Path | None, as_json: bool
) -> None:
    """Past runs, newest first, then who added, changed, paused, resumed or removed jobs.

    \b
    Examples:
      dbkeeper history
      dbkeeper history purge-logs -n 50 --json
    """
    keeper = keeper_from(ctx, config_path)
    runs = keeper.history(job, limit)
    if as_json:
        output.emit_json([run.to_dict() for run in runs])
        return
    if runs:
        _print_runs(runs)
    else:
        output.console.print("no runs recorded yet")
    _print_changes(keeper.changes(job, limit))


@main.command()
@click.argument("database", required=False)
@config_option
@json_option
@click.pass_context
def health(
    ctx: click.Context, database: str | None, config_path: Path | None, as_json: bool
) -> None:
    """The latest health report of each database (or one), with growth and forecast.

    \b
    Examples:
      dbkeeper health
      dbkeeper health app --json
    """
    keeper = keeper_from(ctx, config_path)
    if database is not None and database not in keeper.targets:
        raise DbkeeperError(
            f"no database named {database!r} (databases: {', '.join(keeper.targets) or 'none'})"
        )
    reports = keeper.store.latest_health()
    if database is not None:
        reports = {name: item for name, item in reports.items() if name == database}
    if as_json:
        output.emit_json(
            {name: {"taken_at": taken, **report} for name, (taken, report) in reports.items()}
        )
        return
    if not reports:
        output.console.print("no health report yet (run a health job: `dbkeeper run JOB`)")
        return
    for name, (taken, report) in reports.items():
        growth = report.get("growth_bytes_per_day")
        output.key_values(
            f"{name}: {output.styled(report['status'])}",
            [
                ("taken", output.when(taken)),
                ("size", format_size(report["size_bytes"])),
                (
                    "growth",
                    f"{format_size(growth)}/day" if growth is not None else "not enough history",
                ),
                ("disk full in", _days(report.get("days_until_disk_full"))),
                *_engine_figures(report),
                ("problems", "; ".join(report["problems"]) or "none"),
            ],
        )
        output.table(
            None,
            ["table", "rows", "size"],
            [
                (t["table"], t["rows"], format_size(t["bytes"]) if t["bytes"] is not None else "?")
                for t in report["tables"]
            ],
        )


def _engine_figures(report: dict[str, Any]) -> list[tuple[str, Any]]:
    if "xid_age" in report:  # PostgreSQL
        return [
            ("connections", f"{report['connections']} of {report['max_connections']}"),
            ("cache hit", f"{report['cache_hit_percent']}%"),
            ("xid age", f"{report['xid_age']:,}"),
            ("long queries", report["long_running_queries"]),
            ("idle in tx", report["idle_in_transaction"]),
        ]
    return [
        ("free pages", f"{report['freelist_percent']}%"),
        ("integrity", ", ".join(report["integrity"]) or "not checked"),
    ]


def _days(value: float | None) -> str:
    return "-" if value is None else f"~{value} days"
