"""The HTTP admin API served by ``dbkeeper start``: status, jobs, previews, runs, health,
Prometheus metrics, liveness, and the dashboard.

Every POST needs ``Authorization: Bearer TOKEN`` (``[keeper.http] token``), and when
the server listens beyond loopback every request does. Errors are JSON objects with
an ``error`` message.
"""

# No `from __future__ import annotations` here: FastAPI reads the route annotations.
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from dbkeeper.catalog import DefineMode, ReadOnlyJob
from dbkeeper.errors import ConfigError, DbkeeperError, UnknownJob
from dbkeeper.metrics import render_metrics
from dbkeeper.models import RunStatus
from dbkeeper.version import __version__

if TYPE_CHECKING:
    from dbkeeper.keeper import Keeper
    from dbkeeper.scheduler import Scheduler


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiError(HTTPException):
    """An error answered as ``{"error": message}``."""


def create_app(keeper: "Keeper", scheduler: "Scheduler | None", *, loopback: bool) -> FastAPI:
    token = keeper.config.keeper.http.token
    app = FastAPI(
        title="dbkeeper",
        version=__version__,
        description="Declarative database maintenance: jobs, runs, previews and health.",
        docs_url="/api/docs",
        redoc_url=None,
    )

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if not token or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), token.encode())

    def require_token(request: Request) -> None:
        if not token:
            raise ApiError(401, "this server has no token: set [keeper.http] token to allow it")
        if not authorized(request):
            raise ApiError(401, "missing or wrong bearer token")

    if not loopback:

        @app.middleware("http")
        async def everything_needs_the_token(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if not authorized(request):
                return _error(401, "missing or wrong bearer token")
            return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_input(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        ]
        return _error(422, "; ".join(problems))

    @app.exception_handler(UnknownJob)
    async def unknown(_: Request, exc: UnknownJob) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(ConfigError)
    async def invalid(_: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "problems": exc.problems}, status_code=422)

    @app.exception_handler(ReadOnlyJob)
    async def read_only(_: Request, exc: ReadOnlyJob) -> JSONResponse:
        return _error(403, str(exc))

    @app.exception_handler(DbkeeperError)
    async def refused(_: Request, exc: DbkeeperError) -> JSONResponse:
        return _error(409, str(exc))

    def job_name(name: str) -> str:
        return keeper.get(name).name

    Job = Annotated[str, Depends(job_name)]
    NewName = Annotated[str, PathParam(min_length=1, max_length=200)]
    By = Annotated[
        str | None, Query(max_length=100, description="Who makes the change, for the change log")
    ]
    Options = Annotated[
        dict[str, Any],
        Body(
            description="The job's keys, as in a config file's [jobs.NAME] table",
            examples=[
                {
                    "task": "purge",
                    "database": "app",
                    "table": "logs",
                    "column": "created_at",
                    "older_than": "30d",
                    "schedule": "0 3 * * *",
                }
            ],
        ),
    ]

    def actor(request: Request, by: str | None) -> str:
        client = request.client.host if request.client else "?"
        return f"{by or 'api'} (api from {client})"

    def changed(name: str) -> Any:
        if scheduler is not None:
            scheduler.wake()
        return jsonable_encoder(keeper.describe(name))

    def define(
        request: Request, name: str, options: dict[str, Any], by: str | None, mode: DefineMode
    ) -> tuple[Any, bool]:
        tasks = keeper.config.keeper.http.job_tasks
        _, new = keeper.define_job(name, options, by=actor(request, by), mode=mode, tasks=tasks)
        return changed(name), new

    @app.get("/api/status", summary="Jobs with their health, nodes and runs in flight")
    def status() -> Any:
        return jsonable_encoder(keeper.status())

    @app.get("/api/jobs", summary="Every job with its schedule in words, next run and health")
    def jobs() -> Any:
        return jsonable_encoder(keeper.overview())

    @app.get("/api/jobs/{name}", summary="One job: settings, health, recent runs and changes")
    def job(name: Job) -> Any:
        return jsonable_encoder(keeper.describe(name))

    @app.post(
        "/api/jobs/{name}",
        status_code=201,
        dependencies=[Depends(require_token)],
        summary="Define a job at runtime (every node runs it from its next slot)",
    )
    def add_job(request: Request, name: NewName, options: Options, by: By = None) -> Any:
        return define(request, name, options, by, "add")[0]

    @app.put(
        "/api/jobs/{name}",
        dependencies=[Depends(require_token)],
        summary="Replace (or create) a runtime job; config file jobs are read-only",
        responses={201: {"description": "Created"}},
    )
    def put_job(
        request: Request, response: Response, name: NewName, options: Options, by: By = None
    ) -> Any:
        body, new = define(request, name, options, by, "replace")
        response.status_code = 201 if new else 200
        return body

    @app.delete(
        "/api/jobs/{name}",
        dependencies=[Depends(require_token)],
        summary="Remove a runtime job; its history stays",
    )
    def remove_job(request: Request, name: NewName, by: By = None) -> Any:
        cancelled = keeper.remove_job(name, by=actor(request, by))
        if scheduler is not None:
            scheduler.wake()
        return {"removed": name, "queued_runs_cancelled": cancelled}

    @app.post(
        "/api/jobs/{name}/pause",
        dependencies=[Depends(require_token)],
        summary="Pause any job: its slots pass unrun, chains stop at it",
    )
    def pause(
        request: Request,
        name: Job,
        reason: Annotated[str, Query(max_length=500)] = "",
        by: By = None,
    ) -> Any:
        keeper.pause(name, by=actor(request, by), reason=reason)
        return changed(name)

    @app.post(
        "/api/jobs/{name}/resume",
        dependencies=[Depends(require_token)],
        summary="Resume a paused job from its next slot",
    )
    def resume(request: Request, name: Job, by: By = None) -> Any:
        keeper.resume(name, by=actor(request, by))
        return changed(name)

    @app.get("/api/jobs/{name}/preview", summary="What the job would do now, changing nothing")
    def preview(name: Job) -> Any:
        return jsonable_encoder(keeper.preview(name))

    @app.post(
        "/api/jobs/{name}/run",
        status_code=202,
        dependencies=[Depends(require_token)],
        summary="Queue a run now; it is recorded like any other",
    )
    async def run_now(
        name: Job,
        with_downstream: Annotated[
            bool, Query(description="Its end starts the jobs that come after it")
        ] = False,
    ) -> Any:
        run = await run_in_threadpool(keeper.request_run, name, with_downstream=with_downstream)
        if scheduler is not None:
            scheduler.wake()
        return {"run_id": run.id, "status": run.status.value, "url": f"/api/runs/{run.id}"}

    @app.get("/api/runs", summary="Past and current runs, newest first")
    def runs(
        job: Annotated[str | None, Query(max_length=200)] = None,
        status: Annotated[RunStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Any:
        found = keeper.history(job, limit, status=[status] if status else [])
        return [run.to_dict() for run in found]

    @app.get("/api/runs/{run_id}", summary="One run")
    def run(run_id: Annotated[int, PathParam(ge=1, le=2**62)]) -> Any:
        found = keeper.store.get_run(run_id)
        if found is None:
            raise ApiError(404, f"no run {run_id}")
        return found.to_dict()

    @app.get("/api/health", summary="The latest health report of each database, with history")
    def health() -> Any:
        reports = keeper.store.latest_health()
        return jsonable_encoder(
            {
                name: {
                    "taken_at": taken,
                    **report,
                    "sizes": [
                        {"at": at, "bytes": size}
                        for at, size in keeper.store.health_sizes(name, EPOCH)
                    ],
                }
                for name, (taken, report) in reports.items()
            }
        )

    @app.get("/healthz", summary="Liveness: the scheduler loop and the state store")
    def healthz() -> JSONResponse:
        checks = keeper.liveness(scheduler)
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "failing", **checks}, 200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(render_metrics(keeper, scheduler), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        page = resources.files("dbkeeper").joinpath("dashboard.html").read_text("utf-8")
        return HTMLResponse(page)

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
