"""How a target column stores time, and the cutoff in that form.

Purge compares a column with a cutoff. The column may hold ISO 8601 text
(SQLite's ``CURRENT_TIMESTAMP``, a ``T`` separator, fractions, ``Z`` or an
offset), Unix seconds or Unix milliseconds. The format is detected from a
sample of the column's values, or declared with ``column_format``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from dbkeeper.errors import TargetError

# Unix milliseconds pass 1e11 in 1973; Unix seconds reach it in the year 5138.
_MILLISECONDS_FROM = 100_000_000_000


class TimeFormat(enum.Enum):
    ISO = "iso"
    UNIX_SECONDS = "unix_s"
    UNIX_MILLISECONDS = "unix_ms"

    def cutoff_value(self, cutoff: datetime) -> float | int:
        """The cutoff as a number this numeric format compares against."""
        seconds = cutoff.timestamp()
        if self is TimeFormat.UNIX_MILLISECONDS:
            return round(seconds * 1000)
        if self is TimeFormat.UNIX_SECONDS:
            return seconds
        raise ValueError("ISO text has no numeric cutoff")

    def to_datetime(self, value: float | int) -> datetime:
        seconds = value / 1000 if self is TimeFormat.UNIX_MILLISECONDS else value
        return datetime.fromtimestamp(seconds, UTC)


def truncate_to_millisecond(moment: datetime) -> datetime:
    """Cutoffs are whole milliseconds: SQLite reads text times to the millisecond."""
    return moment - timedelta(microseconds=moment.microsecond % 1000)


def detect(values: Iterable[object], where: str) -> TimeFormat:
    """Decide the format from sample values (NULLs ignored); ``where`` names the column."""
    kinds: set[TimeFormat] = set()
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool):
            raise TargetError(f"{where} holds booleans, not times")
        if isinstance(value, int | float):
            kinds.add(
                TimeFormat.UNIX_MILLISECONDS
                if abs(value) >= _MILLISECONDS_FROM
                else TimeFormat.UNIX_SECONDS
            )
        elif isinstance(value, str):
            if not _looks_iso(value):
                raise TargetError(
                    f"{where} holds {value!r}, which is not an ISO 8601 time; "
                    "store ISO text or Unix seconds/milliseconds, or set column_format"
                )
            kinds.add(TimeFormat.ISO)
        else:
            raise TargetError(f"{where} holds {type(value).__name__} values, not times")
    if not kinds:
        return TimeFormat.ISO
    if len(kinds) > 1:
        names = ", ".join(sorted(kind.value for kind in kinds))
        raise TargetError(
            f"{where} mixes time formats ({names}); set column_format to the one to use"
        )
    return kinds.pop()


def _looks_iso(text: str) -> bool:
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        datetime.fromisoformat(candidate)
    except ValueError:
        return False
    return len(candidate) >= 10
