"""Schedules: when a job's slots fall.

Two families share one interface: cron expressions (5 fields, an optional 6th
field of seconds, ``@daily``-style aliases, month and day names), evaluated by
cronsim in the job's time zone with Debian cron's DST behaviour; and fixed
intervals (``every 15m``) whose slots are multiples of the interval since the
Unix epoch, so every process computes the same slots.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from dbkeeper.errors import ScheduleError
from dbkeeper.units import parse_duration

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = re.compile(r"every\s+(.+)", re.IGNORECASE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def require_aware(moment: datetime, what: str = "time") -> datetime:
    """Refuse naive datetimes: every time inside dbkeeper knows its zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {moment.isoformat()}")
    return moment


def load_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)"
        ) from None


class Schedule(ABC):
    """When a job is due. Times in and out are aware; results are in UTC."""

    text: str
    timezone: ZoneInfo

    @abstractmethod
    def next_after(self, after: datetime) -> datetime:
        """The first slot strictly after ``after``."""

    @abstractmethod
    def describe(self) -> str:
        """The schedule in words."""

    def slots(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every slot in the half-open window (after, until]."""
        slot = self.next_after(after)
        while slot <= until:
            yield slot
            slot = self.next_after(slot)

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        result: list[datetime] = []
        moment = after
        for _ in range(count):
            moment = self.next_after(moment)
            result.append(moment)
        return result

    def typical_period(self, around: datetime) -> timedelta:
        """The gap between two slots near ``around``; used to judge lateness."""
        first = self.next_after(around)
        return self.next_after(first) - first


class CronSchedule(Schedule):
    def __init__(self, text: str, timezone: ZoneInfo) -> None:
        self.text = text
        self.timezone = timezone
        expression = ALIASES.get(text.strip().lower(), text.strip())
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise ScheduleError(
                f"cron expression {text!r} has {len(fields)} fields; expected 5 "
                "(minute hour day-of-month month day-of-week), an optional 6th for "
                "seconds, an alias like @daily, or 'every 15m'"
            )
        if len(fields) == 6:
            # Our sixth field is seconds; cronsim wants seconds first.
            fields = [fields[5], *fields[:5]]
        self._expression = " ".join(fields)
        try:
            probe = CronSim(self._expression, datetime.now(timezone))
            self._words = probe.explain()
            next(probe)
        except CronSimError as exc:
            raise ScheduleError(f"cron expression {text!r}: {exc}") from None
        except StopIteration:
            raise ScheduleError(f"cron expression {text!r} never fires") from None

    def next_after(self, after: datetime) -> datetime:
        local = require_aware(after).astimezone(self.timezone)
        if local.microsecond:
            # cronsim drops microseconds; a slot at the truncated second is not after.
            local = local.replace(microsecond=0)
        return next(CronSim(self._expression, local)).astimezone(UTC)

    def describe(self) -> str:
        words = self._words
        if self.timezone.key != "UTC":
            words += f" ({self.timezone.key})"
        return words


class IntervalSchedule(Schedule):
    def __init__(self, text: str, interval: timedelta, timezone: ZoneInfo) -> None:
        if interval < timedelta(seconds=1):
            raise ScheduleError(f"interval in {text!r} must be at least 1s")
        if interval.total_seconds() != int(interval.total_seconds()):
            raise ScheduleError(f"interval in {text!r} must be a whole number of seconds")
        self.text = text
        self.timezone = timezone
        self.interval = interval

    def next_after(self, after: datetime) -> datetime:
        step = int(self.interval.total_seconds())
        elapsed = require_aware(after) - _EPOCH
        whole = int(elapsed.total_seconds() // step)
        return _EPOCH + timedelta(seconds=(whole + 1) * step)

    def describe(self) -> str:
        seconds = int(self.interval.total_seconds())
        for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds % size == 0:
                count = seconds // size
                return f"Every {unit}" if count == 1 else f"Every {count} {unit}s"
        return "Every second" if seconds == 1 else f"Every {seconds} seconds"


def parse_schedule(text: str, timezone: str | ZoneInfo = "UTC") -> Schedule:
    """Build a Schedule from config text: cron, an alias, or ``every <duration>``."""
    zone = timezone if isinstance(timezone, ZoneInfo) else load_timezone(timezone)
    every = _EVERY.fullmatch(text.strip())
    if every:
        try:
            interval = parse_duration(every.group(1))
        except ValueError as exc:
            raise ScheduleError(f"schedule {text!r}: {exc}") from None
        return IntervalSchedule(text, interval, zone)
    return CronSchedule(text, zone)
