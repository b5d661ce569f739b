"""The report query: its dimensions (what a call, a visit and a spend row have), the
period, the zone and the pools; `time_sql` writes its local times in SQL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .localtime import DAY, TIME_DIMENSIONS, UTC_SEGMENTS, Segments, local_ts_sql, zone_segments

DIMENSIONS: tuple[str, ...] = (
    "channel", "source", "medium", "campaign", "term", "content", "landing_page",
    "referrer_domain", "static_channel", "pool", "day", "hour", "weekday", "first_time",
    "tag",
)
# dimensions a visit has (visitors are counted per visit; the rest are the call's own)
VISIT_DIMENSIONS: tuple[str, ...] = (
    "channel", "source", "medium", "campaign", "term", "content", "landing_page",
    "referrer_domain", "day", "hour", "weekday",
)
# dimensions a spend row has (weekday follows from its day)
SPEND_DIMENSIONS: frozenset[str] = frozenset({"source", "medium", "campaign", "day", "weekday"})


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """`group_by` dimensions, filters (dimension → accepted values, typed as the report
    shows them: str, int for day number/hour/weekday, bool for first_time), the tracker
    and the period [since, until) in unix seconds. `pools` maps each pool number to its
    pool's name (from the configuration: a number moved to another pool counts there)."""

    group_by: tuple[str, ...]
    filters: Mapping[str, frozenset[Any]] = field(default_factory=dict)
    tracker: str | None = None
    since: float = 0.0
    until: float = float("inf")
    pools: Mapping[str, str] = field(default_factory=dict)
    zone: str = "UTC"  # IANA name: the days, hours and weekdays of the report

    def segments(self) -> Segments:
        """The zone's UTC offsets over the period (`zone_segments`)."""
        return zone_segments(self.zone, self.since, self.until)

    def local_time(self) -> bool:
        """Does the query need local (not UTC) days, hours or weekdays?"""
        return self.segments() != UTC_SEGMENTS and any(
            d in TIME_DIMENSIONS for d in (*self.group_by, *self.filters))

    def visits_apply(self) -> bool:
        """Visitors can be counted for this query (no call-only dimension in it)."""
        return all(d in VISIT_DIMENSIONS for d in (*self.group_by, *self.filters))

    def spend_applies(self) -> bool:
        return all(d in SPEND_DIMENSIONS for d in (*self.group_by, *self.filters))


def time_sql(dim: str, query: ReportQuery, floor: Callable[[str], str],
             column: str = "r.ts") -> str | None:
    """SQL for a local day number, hour or weekday of the query's zone from a
    unix-seconds column (`floor` writes the dialect's integer floor of an expression);
    None when the query's times are UTC (the store's own day and hour columns do)."""
    if dim not in TIME_DIMENSIONS or not query.local_time():
        return None
    local = local_ts_sql(column, query.segments())
    day = floor(f"{local} / {DAY}")
    if dim == "hour":
        return f"({floor(f'{local} / 3600')} % 24)"
    return day if dim == "day" else f"(({day} + 3) % 7 + 1)"
