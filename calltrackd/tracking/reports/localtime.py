"""Local time for reports: a zone's UTC offsets over a period (`zone_segments`), a unix
time's local day and hour, the same in SQL, and day numbers (days since 1970-01-01)."""

from __future__ import annotations

import bisect
import functools
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

DAY = 86400


# (starts, offsets): the offset in seconds is offsets[i] from starts[i] (starts[0] is
# -inf) until starts[i + 1]. A period of 90 days has at most a few transitions.

Segments = tuple[tuple[float, ...], tuple[int, ...]]
TIME_DIMENSIONS = frozenset({"day", "hour", "weekday"})
UTC_SEGMENTS: Segments = ((float("-inf"),), (0,))
_SEARCH_LIMIT = 2**31  # periods open to the future are searched up to 2038


def _offset(zone: ZoneInfo, ts: float) -> int:
    off = datetime.fromtimestamp(ts, zone).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


@functools.lru_cache(maxsize=256)
def zone_segments(zone: str, since: float, until: float) -> Segments:
    """The UTC offsets of `zone` over [since, until): found by a walk a day at a time and
    a bisection to the second at each change (offsets change at most twice a year)."""
    if zone in ("UTC", "Etc/UTC"):
        return UTC_SEGMENTS
    tz = ZoneInfo(zone)
    lo = max(since, 0.0)
    hi = min(until, float(_SEARCH_LIMIT))
    starts, offsets = [float("-inf")], [_offset(tz, lo)]
    t = lo
    while t < hi:
        nxt = min(t + DAY, hi)
        off = _offset(tz, nxt)
        if off != offsets[-1]:
            a, b = t, nxt  # offset(a) is the old one, offset(b) the new
            while b - a > 1:
                mid = (a + b) // 2
                if _offset(tz, mid) == off:
                    b = mid
                else:
                    a = mid
            starts.append(float(b))
            offsets.append(off)
        t = nxt
    return tuple(starts), tuple(offsets)


def offset_at(segs: Segments, ts: float) -> int:
    starts, offsets = segs
    if len(starts) == 1:
        return offsets[0]
    return offsets[bisect.bisect_right(starts, ts) - 1]


def local_day_hour(segs: Segments, ts: float) -> tuple[int, int]:
    """(day number, hour) of a unix time in the local time of the segments."""
    local = ts + offset_at(segs, ts)
    return int(local // DAY), int(local % DAY // 3600)


def local_ts_sql(column: str, segs: Segments) -> str:
    """SQL for the local time (unix seconds shifted by the offset) of a unix-seconds
    column; the numbers are the zone's own, written as literals."""
    starts, offsets = segs
    if len(starts) == 1:
        return f"({column} + {offsets[0]})"
    cases = " ".join(f"WHEN {column} < {starts[i + 1]!r} THEN {offsets[i]}"
                     for i in range(len(starts) - 1))
    return f"({column} + CASE {cases} ELSE {offsets[-1]} END)"


def local_midnight(day: date, zone: str) -> float:
    """Unix seconds of the start of a local day (DST-correct)."""
    tz = UTC if zone in ("UTC", "Etc/UTC") else ZoneInfo(zone)
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def local_date(ts: float, zone: str) -> date:
    tz = UTC if zone in ("UTC", "Etc/UTC") else ZoneInfo(zone)
    return datetime.fromtimestamp(ts, tz).date()


def weekday(day_number: int) -> int:
    """ISO weekday (Monday 1 … Sunday 7) of a day number since 1970-01-01 (a Thursday)."""
    return (day_number + 3) % 7 + 1


def day_number(text: str) -> int:
    return date.fromisoformat(text).toordinal() - date(1970, 1, 1).toordinal()


def day_text(number: int) -> str:
    return date.fromordinal(number + date(1970, 1, 1).toordinal()).isoformat()
