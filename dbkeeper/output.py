"""Output for people (Rich tables) and for programs (JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True, soft_wrap=True)

STATUS_STYLE = {
    "succeeded": "green",
    "healthy": "green",
    "ok": "green",
    "running": "cyan",
    "queued": "cyan",
    "skipped": "yellow",
    "missed": "yellow",
    "late": "yellow",
    "warning": "yellow",
    "disabled": "dim",
    "cancelled": "yellow",
    "failed": "red",
    "failing": "red",
    "timed_out": "red",
    "abandoned": "red",
    "stuck": "red",
    "dead": "red",
    "critical": "red",
}


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_default, indent=2) + "\n")


def styled(word: str | None) -> str:
    if not word:
        return ""
    style = STATUS_STYLE.get(word)
    return f"[{style}]{word}[/{style}]" if style else word


def when(moment: datetime | str | None, now: datetime | None = None) -> str:
    """``2026-11-22 01:00 (in 3h)``, in UTC: table headers say so."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    reference = now or datetime.now(UTC)
    delta = (moment - reference).total_seconds()
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} ({relative(delta)})"


def stamp(moment: datetime | None) -> str:
    """A time for people: UTC to the second, or to the millisecond when it has a fraction."""
    if moment is None:
        return "-"
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}"
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def relative(seconds: float) -> str:
    size = abs(seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if size >= length:
            text = f"{size / length:.0f}{unit}"
            break
    else:
        text = f"{size:.0f}s"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    console.print(grid)


def key_values(title: str, items: Iterable[tuple[str, Any]]) -> None:
    grid = Table(title=title, title_justify="left", show_header=False, box=None)
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in items:
        if isinstance(value, datetime):
            value = stamp(value) + " UTC"
        grid.add_row(key, "-" if value is None else str(value))
    console.print(grid)
