"""Schedules: Debian cron semantics (DST, Sunday 0/7, dom OR dow), seconds, intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dbkeeper.errors import ScheduleError
from dbkeeper.schedule import parse_schedule
from dbkeeper.units import format_duration, format_size, parse_duration, parse_size
from tests.conftest import Project


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def slots(text: str, tz: str, after: datetime, until: datetime) -> list[datetime]:
    return list(parse_schedule(text, tz).slots(after, until))


def test_daily_0230_runs_once_on_the_fall_back_day() -> None:
    # Berlin leaves summer time at 03:00 CEST on 2024-10-27: 02:30 local happens twice.
    found = slots("30 2 * * *", "Europe/Berlin", utc(2024, 10, 25), utc(2024, 10, 29))
    assert found == [
        utc(2024, 10, 25, 0, 30),  # 02:30 CEST
        utc(2024, 10, 26, 0, 30),  # 02:30 CEST
        utc(2024, 10, 27, 0, 30),  # the first 02:30 (CEST) only
        utc(2024, 10, 28, 1, 30),  # 02:30 CET
    ]


def test_daily_0230_runs_once_right_after_the_gap_on_the_spring_forward_day() -> None:
    # On 2024-03-31 Berlin jumps from 02:00 to 03:00: 02:30 does not exist.
    found = slots("30 2 * * *", "Europe/Berlin", utc(2024, 3, 29), utc(2024, 4, 2))
    assert found == [
        utc(2024, 3, 29, 1, 30),
        utc(2024, 3, 30, 1, 30),
        utc(2024, 3, 31, 1, 0),  # 03:00 CEST, right after the gap
        utc(2024, 4, 1, 0, 30),
    ]


def test_hourly_job_in_a_dst_zone_keeps_one_slot_per_real_hour() -> None:
    found = slots("0 * * * *", "Europe/Berlin", utc(2024, 10, 26, 23), utc(2024, 10, 27, 3))
    assert found == [utc(2024, 10, 27, hour) for hour in range(0, 4)]


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
def test_sunday_is_0_and_7_and_sun(sunday: str) -> None:
    found = slots(f"0 12 * * {sunday}", "UTC", utc(2024, 6, 1), utc(2024, 7, 1))
    assert found == [utc(2024, 6, day, 12) for day in (2, 9, 16, 23, 30)]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    found = slots("0 0 13 * fri", "UTC", utc(2024, 9, 1), utc(2024, 10, 1))
    # Every Friday (6, 13, 20, 27) and every 13th: the 13th is itself a Friday here.
    assert [moment.day for moment in found] == [6, 13, 20, 27]
    found = slots("0 0 13 * mon", "UTC", utc(2024, 9, 1), utc(2024, 10, 1))
    assert [moment.day for moment in found] == [2, 9, 13, 16, 23, 30]


def test_names_ranges_and_steps() -> None:
    found = slots("0 9 * jan,jul mon-fri", "UTC", utc(2024, 1, 1), utc(2024, 1, 8))
    assert [moment.day for moment in found] == [1, 2, 3, 4, 5]
    found = slots("*/20 1 * * *", "UTC", utc(2024, 1, 1), utc(2024, 1, 2))
    assert [moment.minute for moment in found] == [0, 20, 40]


def test_optional_sixth_field_is_seconds() -> None:
    found = slots("* * * * * 15", "UTC", utc(2024, 1, 1), utc(2024, 1, 1, 0, 3))
    assert found == [utc(2024, 1, 1, 0, minute, 15) for minute in range(3)]
    found = slots("* * * * * */20", "UTC", utc(2024, 1, 1), utc(2024, 1, 1, 0, 1))
    assert found == [utc(2024, 1, 1, 0, 0, 20), utc(2024, 1, 1, 0, 0, 40), utc(2024, 1, 1, 0, 1)]


@pytest.mark.parametrize(
    ("alias", "first", "second"),
    [
        ("@hourly", utc(2024, 5, 1, 1), utc(2024, 5, 1, 2)),
        ("@daily", utc(2024, 5, 2), utc(2024, 5, 3)),
        ("@weekly", utc(2024, 5, 5), utc(2024, 5, 12)),
        ("@monthly", utc(2024, 6, 1), utc(2024, 7, 1)),
    ],
)
def test_aliases(alias: str, first: datetime, second: datetime) -> None:
    schedule = parse_schedule(alias, "UTC")
    assert schedule.upcoming(utc(2024, 5, 1, 0, 30), 2) == [first, second]


def test_every_6h_slots_are_aligned_to_the_epoch_whoever_computes_them() -> None:
    one = parse_schedule("every 6h", "UTC")
    two = parse_schedule("every 6h", "Europe/Berlin")
    after = utc(2024, 3, 30, 19, 17, 42)
    expected = [utc(2024, 3, 31, hour) for hour in (0, 6, 12, 18)]
    assert one.upcoming(after, 4) == expected
    assert two.upcoming(after, 4) == expected
    assert list(one.slots(utc(2024, 3, 31), utc(2024, 3, 31, 12))) == expected[1:3]
    every_15m = parse_schedule("every 15m", "UTC")
    assert every_15m.next_after(utc(2024, 1, 1, 10, 44, 59)) == utc(2024, 1, 1, 10, 45)
    assert every_15m.next_after(utc(2024, 1, 1, 10, 45)) == utc(2024, 1, 1, 11, 0)


def test_schedules_in_words() -> None:
    assert parse_schedule("30 2 * * *", "UTC").describe() == "At 02:30 every day"
    assert parse_schedule("30 2 * * *", "Europe/Berlin").describe() == (
        "At 02:30 every day (Europe/Berlin)"
    )
    assert parse_schedule("every 6h", "UTC").describe() == "Every 6 hours"
    assert parse_schedule("every 15m", "UTC").describe() == "Every 15 minutes"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("0 0 31 2 *", "0 0 31 2 *"),
        ("61 * * * *", "61"),
        ("* * * *", "* * * *"),
        ("every 0m", "every 0m"),
        ("every banana", "banana"),
        ("@fortnightly", "@fortnightly"),
    ],
)
def test_impossible_or_invalid_schedules_are_refused(text: str, named: str) -> None:
    with pytest.raises(ScheduleError) as refused:
        parse_schedule(text, "UTC")
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("90d", 90 * 86400),
        ("1w", 7 * 86400),
        ("1h30m", 5400),
        ("250ms", 0.25),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "90", "d", "-1d", "1y", "3 days ago", "1.5.2h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_sizes() -> None:
    assert parse_size("512") == 512
    assert parse_size("10KB") == 10_000
    assert parse_size("2KiB") == 2048
    assert parse_size("1.5 GB") == 1_500_000_000
    assert format_size(32_000_000) == "32.0 MB"
    assert format_size(999_990) == "1.0 MB"
    assert format_size(999) == "999 B"
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")


def test_next_command_prints_fire_times_local_and_utc(project: Project) -> None:
    result = project.cli(
        "next",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--after",
        "2024-10-26T12:00:00Z",
        "-n",
        "3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = result.json()
    assert data["description"] == "At 02:30 every day (Europe/Berlin)"
    assert [slot["utc"] for slot in data["times"]] == [
        "2024-10-27T00:30:00+00:00",
        "2024-10-28T01:30:00+00:00",
        "2024-10-29T01:30:00+00:00",
    ]
    assert [slot["local"] for slot in data["times"]][:2] == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]
    shown = project.cli("next", "--cron", "every 6h", "-n", "2")
    assert shown.returncode == 0, shown.stderr
    assert "Every 6 hours" in shown.stdout


def test_next_refuses_a_bad_expression_with_usage_status(project: Project) -> None:
    result = project.cli("next", "--cron", "0 0 31 2 *")
    assert result.returncode in (1, 2)
    assert "0 0 31 2 *" in result.stderr
    assert "Traceback" not in result.stderr
