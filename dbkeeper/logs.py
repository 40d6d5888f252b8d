"""Logs for people on stderr, and in daily files (``keeper.log_dir``) pruned after
``keeper.log_retention``; ``--log-format json`` writes one JSON object per line instead.

Threads only put their records on a queue; one thread formats and writes them, so a
busy scheduler's workers never queue behind each other's writes."""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
from datetime import UTC, datetime, timedelta
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import IO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Past this many runs starting (or succeeding) at once, they are logged in one line.
EACH_LINE_UP_TO = 10


def log_in_one_line(logger: logging.Logger, template: str, names: list[str]) -> None:
    """One line for many runs: ``template`` given how many, the first
    ``EACH_LINE_UP_TO`` names and how many more."""
    shown = ", ".join(names[:EACH_LINE_UP_TO])
    logger.info(template, len(names), shown, len(names) - EACH_LINE_UP_TO)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


class DailyFileHandler(logging.Handler):
    """Appends to ``FOLDER/dbkeeper-YYYYMMDD.log`` (UTC days); on each new day, files older
    than the retention are deleted."""

    def __init__(self, folder: Path, retention: timedelta) -> None:
        super().__init__(logging.INFO)
        self.folder, self.retention = folder, retention
        self._day = ""
        self._stream: IO[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            day = datetime.fromtimestamp(record.created, UTC).strftime("%Y%m%d")
            if day != self._day:
                self._open(day)
            assert self._stream is not None
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:
            self.handleError(record)

    def _open(self, day: str) -> None:
        if self._stream is not None:
            self._stream.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.folder / f"dbkeeper-{day}.log", "a", encoding="utf-8")
        self._day = day
        self.prune(datetime.now(UTC))

    def prune(self, moment: datetime) -> list[Path]:
        oldest = (moment - self.retention).strftime("%Y%m%d")
        removed = []
        for path in self.folder.glob("dbkeeper-*.log"):
            stamp = path.stem.removeprefix("dbkeeper-")
            if stamp.isdigit() and len(stamp) == 8 and stamp < oldest:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


class _Enqueue(QueueHandler):
    """Puts records on the in-process queue as they are: the writer thread formats them,
    and the queue is thread-safe, so no thread takes a lock to log."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        accepted = bool(self.filter(record))
        if accepted:
            self.emit(record)
        return accepted


_writer: QueueListener | None = None


def setup(kind: str, debug: bool) -> logging.Handler:
    """Logging for a command: warnings on stderr (everything with ``debug``); the returned
    stderr handler's level can be lowered by commands that narrate (``start``)."""
    global _writer
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter(kind))
    stderr.setLevel(logging.DEBUG if debug else logging.WARNING)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    if _writer is not None:  # a second command in one process
        atexit.unregister(_writer.stop)
        _writer.stop()
    _writer = QueueListener(records, stderr, respect_handler_level=True)
    _writer.start()
    atexit.register(_writer.stop)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(logging.WARNING)
    logging.getLogger("dbkeeper").setLevel(logging.DEBUG if debug else logging.INFO)
    return stderr


def to_files(folder: Path, retention: timedelta, kind: str) -> None:
    """Also write dbkeeper's records (and other libraries' warnings) to daily files."""
    assert _writer is not None, "setup() comes first"
    handler = DailyFileHandler(folder, retention)
    handler.setFormatter(formatter(kind))
    _writer.handlers = (*_writer.handlers, handler)
