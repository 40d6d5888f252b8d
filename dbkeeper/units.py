"""Parsing of the human units used in config: durations and byte sizes."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """Parse ``"30s"``, ``"15m"``, ``"2h"``, ``"90d"``, ``"1w"`` or ``"1h30m"``."""
    compact = text.strip().lower()
    if not compact:
        raise ValueError("empty duration")
    seconds = 0.0
    position = 0
    for match in _DURATION.finditer(compact):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
        while position < len(compact) and compact[position] == " ":
            position += 1
    if position != len(compact):
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit: 500ms, 30s, 15m, 2h, 90d, 1w"
        )
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of a duration in the units parse_duration reads."""
    seconds = delta.total_seconds()
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    parts = []
    remaining = int(seconds)
    for unit in ("w", "d", "h", "m", "s"):
        size = int(_DURATION_UNITS[unit])
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts) or "0s"


def parse_size(text: str | int) -> int:
    """Parse ``"10GB"``, ``"512 MiB"`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size; use e.g. 500MB, 10GB, 2GiB")
    unit = (match.group(2) or "b").lower()
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(size: float) -> str:
    """Bytes for people: ``1.5 MB``."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(round(value, 1)) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
