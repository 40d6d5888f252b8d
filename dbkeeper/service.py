"""The HTTP server beside the scheduler in ``dbkeeper start``: uvicorn in a thread."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from dbkeeper.api import create_app, is_loopback
from dbkeeper.errors import ConfigError, DbkeeperError

if TYPE_CHECKING:
    from dbkeeper.keeper import Keeper
    from dbkeeper.scheduler import Scheduler

STARTUP_TIMEOUT = 10.0


class HttpServer:
    """Serves the API while open; refuses to listen beyond loopback without a token."""

    def __init__(self, keeper: Keeper, scheduler: Scheduler) -> None:
        settings = keeper.config.keeper.http
        loopback = is_loopback(settings.host)
        if not loopback and not settings.token:
            raise ConfigError(
                [
                    f"{keeper.config.path}: [keeper.http] listen = {settings.listen!r} is "
                    "beyond loopback: set [keeper.http] token (e.g. token = "
                    '"${DBKEEPER_TOKEN}") so every request must carry it'
                ]
            )
        app = create_app(keeper, scheduler, loopback=loopback)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,  # uvicorn logs through ours
            log_level="warning",
            access_log=False,
        )
        self.listen = settings.listen
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dbkeeper-http", daemon=True)

    def __enter__(self) -> HttpServer:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DbkeeperError(
                    f"the HTTP API cannot listen on {self.listen} (in use? start with "
                    "--no-http or change [keeper.http] listen)"
                )
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
