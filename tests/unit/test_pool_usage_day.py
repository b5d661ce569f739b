"""The hours of a day in a tracker's time zone, as the Pools page charts them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from calltrackd.http.tracking import local_day_hours


def _utc(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * 3600, UTC)


def test_a_day_in_moscow_is_the_24_hours_from_21_00_utc() -> None:
    hours = local_day_hours(date(2026, 12, 1), ZoneInfo("Europe/Moscow"))
    assert len(hours) == 24
    assert _utc(hours[0]) == datetime(2026, 11, 30, 21, tzinfo=UTC)
    assert _utc(hours[-1]) == datetime(2026, 12, 1, 20, tzinfo=UTC)


def test_days_the_clocks_change_have_23_and_25_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert len(local_day_hours(date(2026, 3, 29), berlin)) == 23
    assert len(local_day_hours(date(2026, 10, 25), berlin)) == 25
    assert len(local_day_hours(date(2026, 12, 1), ZoneInfo("UTC"))) == 24


def test_a_half_hour_zone_takes_the_hours_that_straddle_midnight() -> None:
    hours = local_day_hours(date(2026, 12, 1), ZoneInfo("Asia/Kolkata"))  # UTC+05:30
    assert len(hours) == 25
    assert _utc(hours[0]) == datetime(2026, 11, 30, 18, tzinfo=UTC)  # 23:30 local
    assert _utc(hours[-1]) == datetime(2026, 12, 1, 18, tzinfo=UTC)  # 23:30 local
